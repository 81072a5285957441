defmodule DynamicSrv.Epmd.PortChoice do
  @moduledoc false
  # Which of a node's ports a connection attempt takes, when DNS lists it
  # with several (see `DynamicSrv.Epmd`'s "Several ports"): the turn order
  # and the TCP probe.

  alias DynamicSrv.{Defaults, Hints}

  # How long a node with several ports is given to accept a probe connection.
  @probe_timeout 500

  @doc """
  The port a connection attempt to `node` at `ip` takes among `ports`.
  One port: that one. Several (a node restarted on a new port while its
  old record lingers): each connection attempt starts from the next port
  in turn, and takes the first from there that accepts a TCP connection
  within #{@probe_timeout} ms, all probed at once. OTP asks twice per
  attempt: the choice is kept for `DynamicSrv.Defaults.attempt_ttl/0`, so
  both asks get the same port.
  """
  @spec choose(String.t(), :inet | :inet6, :inet.ip_address(), [:inet.port_number(), ...]) ::
          :inet.port_number()
  def choose(_node, _family, _ip, [port]), do: port

  def choose(node, family, ip, ports) do
    case Hints.port_choice(node, family) do
      {^ip, port} ->
        if port in ports, do: port, else: new_choice(node, family, ip, ports)

      _ ->
        new_choice(node, family, ip, ports)
    end
  end

  defp new_choice(node, family, ip, ports) do
    turn = rem(Hints.next_turn(node, family), length(ports))
    {passed, from_turn} = Enum.split(ports, turn)
    port = probe(ip, from_turn ++ passed, family)
    Hints.put_port_choice(node, family, {ip, port}, Defaults.attempt_ttl())
    port
  end

  # The first port of `order` at `ip` that accepts a TCP connection, all
  # probed at once, each by its own process whose connect gives up after
  # @probe_timeout. The choice is made as soon as the ports before it have
  # refused or timed out. The wait is bounded by twice @probe_timeout (the
  # probes' own timeout, plus room for a machine so loaded that they are
  # scheduled late); then a port that did not refuse is taken over one
  # that did, the turn order deciding. Answers arrive through an alias that
  # is removed when the choice is made, so a late one is dropped, and one
  # that came in just before is flushed: nothing stays in the caller's
  # mailbox (a connection setup process of the kernel).
  defp probe(ip, order, family) do
    reply_to = :erlang.alias()
    deadline = System.monotonic_time(:millisecond) + 2 * @probe_timeout

    for port <- order do
      spawn(fn -> send(reply_to, {reply_to, port, accepts?(ip, port, family)}) end)
    end

    port = collect_probes(reply_to, order, deadline, %{})
    :erlang.unalias(reply_to)
    flush_probes(reply_to)
    port
  end

  defp flush_probes(reply_to) do
    receive do
      {^reply_to, _port, _accepts} -> flush_probes(reply_to)
    after
      0 -> :ok
    end
  end

  defp collect_probes(reply_to, order, deadline, results) do
    case decided(order, results) do
      {:ok, port} ->
        port

      :wait ->
        wait = max(deadline - System.monotonic_time(:millisecond), 0)

        receive do
          {^reply_to, port, accepts} ->
            collect_probes(reply_to, order, deadline, Map.put(results, port, accepts))
        after
          wait -> Enum.find(order, hd(order), &(Map.get(results, &1) != false))
        end
    end
  end

  # The first port in order that accepted, once every port before it has
  # answered no; the turn's port when all answered no.
  defp decided(order, results) do
    Enum.reduce_while(order, {:ok, hd(order)}, fn port, all_refused ->
      case Map.fetch(results, port) do
        {:ok, true} -> {:halt, {:ok, port}}
        {:ok, false} -> {:cont, all_refused}
        :error -> {:halt, :wait}
      end
    end)
  end

  defp accepts?(ip, port, family) do
    case :gen_tcp.connect(ip, port, [family, active: false], @probe_timeout) do
      {:ok, socket} ->
        :gen_tcp.close(socket)
        true

      {:error, _} ->
        false
    end
  end
end
