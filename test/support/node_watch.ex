defmodule DynamicSrv.Test.NodeWatch do
  @moduledoc "Counts nodeup/nodedown events on the node it runs on."

  def start do
    parent = self()

    pid =
      spawn(fn ->
        :ok = :net_kernel.monitor_nodes(true)
        send(parent, :watching)
        loop(%{nodeup: 0, nodedown: 0})
      end)

    Process.register(pid, __MODULE__)
    receive do: (:watching -> :ok)
    :ok
  end

  def counts do
    send(__MODULE__, {:counts, self()})
    receive do: ({:counts, counts} -> counts)
  end

  defp loop(counts) do
    receive do
      {event, _node} when event in [:nodeup, :nodedown] ->
        loop(Map.update!(counts, event, &(&1 + 1)))

      {:counts, from} ->
        send(from, {:counts, counts})
        loop(counts)
    end
  end
end
