defmodule ReleaseApp do
  @moduledoc "What a running node reports about its distribution."

  @doc """
  One line: the node's name, its `ERL_DIST_PORT`, its epmd module and the
  NIF file of libcluster_dynamic_srv it loaded at boot (`missing` if none).
  """
  @spec status() :: String.t()
  def status do
    epmd =
      case :init.get_argument(:epmd_module) do
        {:ok, [[module]]} -> module
        :error -> ~c"erl_epmd"
      end

    nif = Path.join([:code.priv_dir(:libcluster_dynamic_srv), "native", "libdynamic_srv_nif.so"])
    nif = if File.regular?(nif), do: nif, else: "missing"

    "node=#{node()} dist_port=#{System.get_env("ERL_DIST_PORT")} epmd_module=#{epmd} nif=#{nif}"
  end
end
