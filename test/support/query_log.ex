defmodule DynamicSrv.Test.QueryLog do
  @moduledoc """
  Follows a dnsmasq query log (`DnsServer.start(records, log_queries:
  true)`) and stamps each query line with the wall clock
  (`System.os_time(:microsecond)`, shared with the nodes of the machine)
  when it was read, every 5 ms: dnsmasq's own timestamps have whole
  seconds only.
  """

  @every 5

  @doc """
  Starts following the log file at `path`, unlinked: the follower lives
  until `stop/1`, which a test's `on_exit` calls from another process than
  the test's.
  """
  @spec start(Path.t()) :: pid()
  def start(path) do
    parent = self()

    pid =
      spawn(fn ->
        {:ok, fd} = :file.open(path, [:read, :binary, :raw])
        send(parent, {:query_log, self()})
        loop(fd, "", [])
      end)

    receive do: ({:query_log, ^pid} -> pid)
  end

  @doc """
  The queries read so far, as `[{os_time_us, type, name}]` in order; `[]`
  when the follower is gone.
  """
  @spec lines(pid()) :: [{integer(), String.t(), String.t()}]
  def lines(pid) do
    ref = Process.monitor(pid)
    send(pid, {:lines, self()})

    receive do
      {:query_lines, ^pid, lines} ->
        Process.demonitor(ref, [:flush])
        lines

      {:DOWN, ^ref, :process, ^pid, _} ->
        []
    end
  end

  @doc "Stops following; returns the queries as `lines/1` does."
  @spec stop(pid()) :: [{integer(), String.t(), String.t()}]
  def stop(pid) do
    lines = lines(pid)
    Process.exit(pid, :kill)
    lines
  end

  defp loop(fd, partial, acc) do
    receive do
      {:lines, from} ->
        {partial, acc} = read(fd, partial, acc)
        send(from, {:query_lines, self(), Enum.reverse(acc)})
        loop(fd, partial, acc)
    after
      @every ->
        {partial, acc} = read(fd, partial, acc)
        loop(fd, partial, acc)
    end
  end

  defp read(fd, partial, acc) do
    case :file.read(fd, 65_536) do
      {:ok, data} ->
        now = System.os_time(:microsecond)
        {lines, [rest]} = (partial <> data) |> String.split("\n") |> Enum.split(-1)
        read(fd, rest, Enum.reduce(lines, acc, &parse(&1, now, &2)))

      _eof ->
        {partial, acc}
    end
  end

  defp parse(line, now, acc) do
    case Regex.run(~r/query\[(\w+)\] (\S+) from/, line) do
      [_, type, name] -> [{now, type, name} | acc]
      nil -> acc
    end
  end
end
