defmodule DynamicSrv.Test.Recorder do
  @moduledoc """
  Stands in for `:net_kernel`/`:erlang` in strategy tests that run in one
  VM: `connect`, `disconnect` and `list` MFAs backed by an Agent, each call
  reported to the test process.
  """

  def start(test_pid) do
    {:ok, agent} = Agent.start_link(fn -> MapSet.new() end)
    %{agent: agent, test: test_pid}
  end

  def mfas(%{agent: agent, test: test}) do
    [
      connect: {__MODULE__, :connect, [agent, test]},
      disconnect: {__MODULE__, :disconnect, [agent, test]},
      list_nodes: {__MODULE__, :list, [agent]}
    ]
  end

  def connect(agent, test, node) do
    Agent.update(agent, &MapSet.put(&1, node))
    send(test, {:connect, node})
    true
  end

  def disconnect(agent, test, node) do
    Agent.update(agent, &MapSet.delete(&1, node))
    send(test, {:disconnect, node})
    true
  end

  def list(agent), do: agent |> Agent.get(& &1) |> MapSet.to_list()

  @doc "Drops a connection behind the strategy's back, as a network fault would."
  def drop(%{agent: agent}, node), do: Agent.update(agent, &MapSet.delete(&1, node))
end

defmodule DynamicSrv.Test.State do
  @moduledoc "A strategy state with the field names of libcluster's `%Cluster.Strategy.State{}`."
  defstruct topology: nil, connect: nil, disconnect: nil, list_nodes: nil, config: [], meta: nil
end
