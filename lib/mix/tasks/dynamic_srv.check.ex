defmodule Mix.Tasks.DynamicSrv.Check do
  @shortdoc "Diagnoses SRV discovery for a service"
  @moduledoc """
  Shows what the peers of this node see in DNS for `SERVICE`, and whether
  they would find this node. See `DynamicSrv.Check` for the report.

      mix dynamic_srv.check my-service.service.consul --nameserver 127.0.0.1:8600

  Options: `--nameserver ip:port` (repeatable), `--tcp`, `--timeout ms`,
  `--query name`, `--node name@host`. The exit status is 1 when the lookup
  fails or the local node would not be found by its peers.
  """
  use Mix.Task

  @impl true
  def run(argv) do
    Mix.Task.run("compile")

    case DynamicSrv.Check.main(argv) do
      0 -> :ok
      status -> exit({:shutdown, status})
    end
  end
end
