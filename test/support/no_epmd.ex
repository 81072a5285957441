defmodule DynamicSrv.Test.NoEpmd do
  @moduledoc """
  Shows that what a test started runs without an epmd daemon, looking only at
  the test's own processes: an epmd (or anything else on port 4369) that
  runs on the machine for other reasons is none of the test's business.

  A test's processes are found by a marker, a string on their command line
  or in their environment (`DynamicSrv.Test.Node` gives every node it starts
  `DYNAMIC_SRV_TEST_VM=<pid of the test VM>`; a release names its directory).
  An epmd that one of them started inherits its environment, so it carries
  the marker too, although it detaches from its parent.
  """
  import ExUnit.Assertions

  @epmd_port 4369

  @doc "The marker of the nodes this test VM starts with `DynamicSrv.Test.Node`."
  def node_marker, do: "DYNAMIC_SRV_TEST_VM=#{System.pid()}"

  @doc """
  Asserts that no process carrying `marker` is an epmd, and that none has a
  socket on port 4369 (listening or connected). Returns how many of the
  test's processes were looked at, so a test can check it saw any.
  """
  def assert_none(marker) do
    own = own_pids(marker)
    epmds = Enum.filter(own, &(comm(&1) == "epmd"))
    assert epmds == [], "epmd processes started by this test: #{inspect(epmds)}"

    on_port = Enum.filter(own, &(sockets_on(&1, @epmd_port) != []))

    assert on_port == [],
           "processes of this test with a socket on #{@epmd_port}: #{inspect(on_port)}"

    length(own)
  end

  @doc "OS pids (strings) of the processes carrying `marker`."
  def own_pids(marker) do
    for dir <- Path.wildcard("/proc/[0-9]*"),
        pid = Path.basename(dir),
        pid != System.pid(),
        carries?(dir, marker),
        do: pid
  end

  defp carries?(dir, marker) do
    Enum.any?(["environ", "cmdline"], fn file ->
      case File.read(Path.join(dir, file)) do
        {:ok, content} -> String.contains?(content, marker)
        {:error, _} -> false
      end
    end)
  end

  defp comm(pid) do
    case File.read("/proc/#{pid}/comm") do
      {:ok, name} -> String.trim_trailing(name)
      {:error, _} -> nil
    end
  end

  @doc """
  The TCP sockets (`{local, remote}` as /proc shows them) of the OS process
  `pid` whose local or remote port is `port`, seen in the process's own
  network namespace.
  """
  def sockets_on(pid, port) do
    inodes = socket_inodes(pid)

    for file <- ["tcp", "tcp6"],
        {:ok, table} <- [File.read("/proc/#{pid}/net/#{file}")],
        [_slot, local, remote, _state, _queues, _timer, _retr, _uid, _timeout, inode | _] <-
          table |> String.split("\n", trim: true) |> Enum.drop(1) |> Enum.map(&String.split/1),
        MapSet.member?(inodes, inode),
        port in [port_of(local), port_of(remote)],
        do: {local, remote}
  end

  defp socket_inodes(pid) do
    for fd <- Path.wildcard("/proc/#{pid}/fd/*"),
        {:ok, "socket:[" <> rest} <- [File.read_link(fd)],
        into: MapSet.new(),
        do: String.trim_trailing(rest, "]")
  end

  defp port_of(address) do
    [_, hex] = String.split(address, ":")
    String.to_integer(hex, 16)
  end
end
