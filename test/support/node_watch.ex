defmodule DynamicSrv.Test.NodeWatch do
  @moduledoc """
  Counts nodeup/nodedown events on the node it runs on, and keeps which
  node each nodedown was about, with its reason.
  """

  def start do
    parent = self()

    pid =
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true, [:nodedown_reason])
        send(parent, :watching)
        loop(%{nodeup: 0, nodedown: 0}, [])
      end)

    Process.register(pid, __MODULE__)
    receive do: (:watching -> :ok)
    :ok
  end

  def counts do
    send(__MODULE__, {:counts, self()})
    receive do: ({:counts, counts} -> counts)
  end

  @doc "The nodedowns since the last call, oldest first, as `{node, reason}`."
  def take_downs do
    send(__MODULE__, {:take_downs, self()})
    receive do: ({:downs, downs} -> downs)
  end

  defp loop(counts, downs) do
    receive do
      {:nodeup, _node, _info} ->
        loop(Map.update!(counts, :nodeup, &(&1 + 1)), downs)

      {:nodedown, node, info} ->
        loop(Map.update!(counts, :nodedown, &(&1 + 1)), [{node, info[:nodedown_reason]} | downs])

      {:counts, from} ->
        send(from, {:counts, counts})
        loop(counts, downs)

      {:take_downs, from} ->
        send(from, {:downs, Enum.reverse(downs)})
        loop(counts, [])
    end
  end
end
