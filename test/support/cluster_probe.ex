defmodule DynamicSrv.Test.ClusterProbe do
  @moduledoc """
  Runs on a node of a cluster test or benchmark and records how the cluster
  forms there: when the node first saw all its expected peers, every nodeup
  and nodedown, and the warnings `global` logs when it cuts connections
  ("... in order to prevent overlapping partitions") or gives up on one
  ("'global' at ... failed to connect to ...").

  Times are wall-clock microseconds (`System.os_time/1`), which all VMs of
  the machine share, so the controller can compare them with the instant it
  told every node to start at.
  """

  @table __MODULE__

  @doc "Starts recording; `peers` is how many peers make a full mesh."
  @spec start(non_neg_integer()) :: :ok
  def start(peers) do
    parent = self()

    pid =
      spawn(fn ->
        :ets.new(@table, [:named_table, :public, :set])
        :ets.insert(@table, [{:peers, peers} | Enum.map(counters(), &{&1, 0})])
        :ok = :net_kernel.monitor_nodes(true, [:nodedown_reason])
        send(parent, :probing)
        loop()
      end)

    Process.register(pid, __MODULE__)
    receive do: (:probing -> :ok)
    :logger.add_primary_filter(__MODULE__, {&__MODULE__.filter/2, []})
    # net_kernel's reports of its setup processes' exits name why a setup
    # failed; the filter counts them and drops every such report.
    :net_kernel.verbose(1)
    check_mesh()
    :ok
  end

  @doc """
  Runs `fun` in a new process at the wall-clock instant `at_us`
  (microseconds): every node given the same instant starts together.
  """
  @spec at(integer(), function()) :: :ok
  def at(at_us, fun) do
    spawn(fn ->
      wait = div(at_us - System.os_time(:microsecond), 1000)
      if wait > 0, do: Process.sleep(wait)
      :ets.insert(@table, {:started, System.os_time(:microsecond)})
      fun.()
      Process.sleep(:infinity)
    end)

    :ok
  end

  @doc """
  At the wall-clock instant `at_us`, forgets the mesh time and counters and
  runs `fun` (e.g. drops every connection, as a partition would), in a new
  process.
  """
  @spec reset_at(integer(), function()) :: :ok
  def reset_at(at_us, fun) do
    spawn(fn ->
      wait = div(at_us - System.os_time(:microsecond), 1000)
      if wait > 0, do: Process.sleep(wait)
      :ets.delete(@table, :mesh_at)
      :ets.insert(@table, Enum.map(counters(), &{&1, 0}))
      fun.()
    end)

    :ok
  end

  defp counters, do: [:overlap, :failed, :downs, :fences, :disconnects, :samples, :full_samples]

  @doc """
  Samples every `every_ms` whether the node sees all its peers (the
  `samples` and `full_samples` counters), from now on; counters reset by
  `reset_at/2` restart the count.
  """
  @spec sample(pos_integer()) :: :ok
  def sample(every_ms) do
    spawn(fn -> sample_loop(every_ms) end)
    :ok
  end

  defp sample_loop(every_ms) do
    [{:peers, peers}] = :ets.lookup(@table, :peers)
    :ets.update_counter(@table, :samples, 1)
    if length(Node.list()) >= peers, do: :ets.update_counter(@table, :full_samples, 1)
    Process.sleep(every_ms)
    sample_loop(every_ms)
  end

  @doc "Forgets the counters now (the mesh time stays)."
  @spec reset() :: :ok
  def reset do
    :ets.insert(@table, Enum.map(counters(), &{&1, 0}))
    :ok
  end

  @doc "What was recorded, as a map."
  @spec report() :: map()
  def report do
    get = fn key, default ->
      case :ets.lookup(@table, key) do
        [{^key, value}] -> value
        [] -> default
      end
    end

    %{
      started: get.(:started, nil),
      mesh_at: get.(:mesh_at, nil),
      peers: length(Node.list()),
      overlap: get.(:overlap, 0),
      failed: get.(:failed, 0),
      downs: get.(:downs, 0),
      fences: get.(:fences, 0),
      disconnects: get.(:disconnects, 0),
      samples: get.(:samples, 0),
      full_samples: get.(:full_samples, 0),
      first_overlap: get.(:first_overlap, nil),
      first_failed: get.(:first_failed, nil),
      reasons: Map.new(:ets.match(@table, {{:reason, :"$1"}, :"$2"}), &List.to_tuple/1),
      setup_exits: Map.new(:ets.match(@table, {{:setup_exit, :"$1"}, :"$2"}), &List.to_tuple/1),
      failed_details: :ets.match(@table, {{:failed_detail, :_}, :"$1"}) |> Enum.map(&hd/1)
    }
  end

  @doc false
  # A primary logger filter: counts global's warnings and the strategy's
  # lines, letting them pass, and net_kernel's reports of setup exits,
  # dropping those (they are there only for this count).
  def filter(%{msg: {:report, report}}, _extra) when is_map(report) or is_tuple(report) do
    case net_kernel_report(report) do
      {:ok, term} ->
        setup_exit(term)
        :stop

      :error ->
        :ignore
    end
  catch
    _, _ -> :ignore
  end

  def filter(%{msg: msg} = event, _extra) do
    text = text(msg)

    cond do
      String.contains?(text, "overlapping partitions") ->
        :ets.insert_new(@table, {:first_overlap, System.os_time(:microsecond)})
        :ets.update_counter(@table, :overlap, 1)

      String.contains?(text, "failed to connect to") ->
        :ets.insert_new(@table, {:first_failed, System.os_time(:microsecond)})
        failed = :ets.update_counter(@table, :failed, 1)
        if failed <= 3, do: failed_detail(failed, text)

      # The strategy's own lines: a fence starts, a node is disconnected.
      String.contains?(text, "fencing ") ->
        :ets.update_counter(@table, :fences, 1)

      String.contains?(text, "disconnected from ") ->
        :ets.update_counter(@table, :disconnects, 1)

      true ->
        :ok
    end

    event
  catch
    _, _ -> event
  end

  @doc "The text of a log event's `msg`."
  def text({:string, text}), do: IO.chardata_to_string(text)

  def text({format, args}) when is_list(args),
    do: format |> :io_lib.format(args) |> to_string()

  def text(other), do: inspect(other)

  defp net_kernel_report(%{report: {:net_kernel, term}}), do: {:ok, term}
  defp net_kernel_report({:net_kernel, term}), do: {:ok, term}
  defp net_kernel_report(_report), do: :error

  # A setup process that exited abnormally: counted by its reason.
  defp setup_exit({:EXIT, _from, reason}) when reason not in [:normal, :shutdown] do
    key = {:setup_exit, reason |> inspect(limit: 5) |> String.slice(0, 120)}
    :ets.update_counter(@table, key, 1, {key, 0})
  end

  defp setup_exit(_term), do: :ok

  # The first failed connects: when (ms after the start), to whom, and what
  # this node's port book held for that node then.
  defp failed_detail(count, text) do
    since =
      case :ets.lookup(@table, :started) do
        [{:started, at}] -> div(System.os_time(:microsecond) - at, 1_000)
        [] -> nil
      end

    book =
      case Regex.run(~r/failed to connect to '?([^'\s]+)'?/, text) do
        [_, target] -> DynamicSrv.PortBook.fetch_ports(target, :inet)
        nil -> :unparsed
      end

    :ets.insert(@table, {{:failed_detail, count}, {since, String.trim(text), book}})
  end

  defp loop do
    receive do
      {:nodeup, _, _} ->
        check_mesh()

      {:nodedown, _, info} ->
        :ets.update_counter(@table, :downs, 1)
        :ets.update_counter(@table, {:reason, reason_key(info[:nodedown_reason])}, 1, {nil, 0})

      _ ->
        :ok
    end

    loop()
  end

  defp reason_key({key, _}) when is_atom(key), do: key
  defp reason_key(key) when is_atom(key), do: key
  defp reason_key(other), do: other

  defp check_mesh do
    [{:peers, peers}] = :ets.lookup(@table, :peers)

    if length(Node.list()) >= peers,
      do: :ets.insert_new(@table, {:mesh_at, System.os_time(:microsecond)})
  end
end
