defmodule DynamicSrv.Native do
  @moduledoc false
  # Stubs of the Rust NIF (native/dynamic_srv_nif). The library is loaded from
  # the application's priv dir when this module loads; it needs neither the
  # file server nor Logger, so it also works while the kernel boots.
  #
  # Callers go through DynamicSrv.Resolver, DynamicSrv.Target and
  # DynamicSrv.Env, never through this module directly.

  @on_load :load
  @nif_name ~c"libdynamic_srv_nif"

  @doc false
  def load do
    case :code.priv_dir(:libcluster_dynamic_srv) do
      {:error, _} -> :priv_dir_not_found
      dir -> :erlang.load_nif(:filename.join([dir, ~c"native", @nif_name]), 0)
    end
  end

  # Starts a lookup and returns at once; the caller later receives
  # {:dynamic_srv_dns, ref, result}.
  def lookup(_ref, _type, _name, _settings), do: :erlang.nif_error(:nif_not_loaded)

  def parse_targets(_targets, _service), do: :erlang.nif_error(:nif_not_loaded)

  def parse_nameservers(_text), do: :erlang.nif_error(:nif_not_loaded)
end
