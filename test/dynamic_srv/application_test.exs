defmodule DynamicSrv.ApplicationTest do
  @moduledoc """
  The application's start in a VM of its own: an app switched over from
  the published package keeps `config :libcluster` but may lack libcluster
  itself, which the published package brought in.
  """
  use ExUnit.Case, async: true

  alias DynamicSrv.Test.Node

  defp boot_with(topologies) do
    code = """
    Application.put_env(:libcluster, :topologies, #{inspect(topologies)})
    {:ok, _} = Application.ensure_all_started(:libcluster_dynamic_srv)
    Logger.flush()
    System.halt(0)
    """

    Node.await_exit(Node.start(nil, eval: code, wait: false), 60_000)
  end

  test "topologies using the strategy without libcluster: one warning naming the dependency" do
    {0, out} = boot_with(dyn: [strategy: Cluster.Strategy.DynamicSrv, config: [service: "x"]])
    assert out =~ ~s(add {:libcluster, "~> 3.3"} to your dependencies)
    assert length(String.split(out, "libcluster is not loaded")) == 2
  end

  test "no word without such a topology" do
    {0, out} = boot_with(other: [strategy: Cluster.Strategy.Epmd])
    refute out =~ "libcluster is not loaded"
  end
end
