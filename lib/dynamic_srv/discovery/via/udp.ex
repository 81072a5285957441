defmodule DynamicSrv.Via.Udp do
  @schema [
    port: {:port, 45_900, "the UDP port every node listens and sends on"},
    ip: {:ip, {0, 0, 0, 0}, "the local address the socket is bound to", ~s(`"0.0.0.0"`)},
    mode: {{:in, [:multicast, :broadcast]}, :multicast, "`:multicast` or `:broadcast`"},
    multicast_addr: {:ip, {230, 1, 1, 251}, "the multicast group", ~s(`"230.1.1.251"`)},
    multicast_if:
      {:ip, {0, 0, 0, 0}, "the local address of the interface to use for multicast",
       ~s(`"0.0.0.0"`)},
    multicast_ttl: {:pos_integer, nil, "hops a multicast announcement may cross", "`ttl`"},
    ttl: {:pos_integer, 1, "Peerage's name for `multicast_ttl`"},
    broadcast_addr:
      {:ip, {255, 255, 255, 255}, "the destination in `:broadcast` mode", ~s(`"255.255.255.255"`)},
    announce_interval: {:pos_integer, 1_000, "ms between announcements"},
    forget_after: {:pos_integer, 10_000, "ms of silence after which a node is forgotten"},
    max_peers:
      {:pos_integer, 256, "the most nodes held at once; new names beyond it are ignored"},
    secret:
      {{:secret, 16}, nil,
       "when set (16 bytes or more), every packet carries an HMAC-SHA256 and packets without a valid one are dropped"},
    max_skew: {:pos_integer, 10_000, "ms a packet's timestamp may differ from the local clock"}
  ]

  @moduledoc """
  A provider that is a process (`serves: true`): every node announces its
  name on a UDP multicast group (or by broadcast) and lists the nodes it
  hears. For development and for networks where nodes share a segment.

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Udp,
        serves: true,
        secret: {:system, "CLUSTER_UDP_SECRET"}

  #{DynamicSrv.Config.table(@schema)}

  ## Peerage's keys

  The keys of Peerage's UDP provider mean the same here: `port`, `ip` (the
  address the socket binds; with `"0.0.0.0"` it hears the group on every
  interface), `multicast_addr` and `ttl` (Peerage's name for
  `multicast_ttl`; `multicast_ttl` wins when both are set). Two
  differences: the default group is `230.1.1.251` (Peerage's is
  `230.1.1.1`; the packets differ anyway, so the two never hear each
  other), and several nodes of one host can share the port.

  A port another program holds without `SO_REUSEADDR` cannot be opened: the
  runner logs that once, with the fix, and retries (see `DynamicSrv.Runner`).

  ## Security

  Packets are a fixed binary layout (`DynamicSrv.Via.Udp.Packet`), never
  Erlang terms. With a `secret`, forged packets (bad MAC), stale ones
  (timestamp beyond `max_skew`) and replayed ones (a timestamp not newer
  than the last one accepted from that name) are dropped. A name becomes
  an atom only after its packet passed these checks, and at most
  `4 * max_peers` distinct names are ever admitted, which bounds the atoms
  this provider creates. Without a secret anyone on the segment can
  announce a name: use one outside development.

  An announcement also carries the node's `ERL_DIST_PORT`, which goes to the
  `DynamicSrv.PortBook`, so nodes using `DynamicSrv.Epmd` reach each other
  with no DNS at all.
  """
  use GenServer
  @behaviour DynamicSrv.Provider
  require Logger

  alias DynamicSrv.Via.Udp.Packet

  @admitted_factor 4

  @impl DynamicSrv.Provider
  def schema, do: @schema

  @impl DynamicSrv.Provider
  def poll(_config) do
    case GenServer.whereis(__MODULE__) do
      nil -> {:error, "DynamicSrv.Via.Udp is not running: configure it with serves: true"}
      pid -> {:ok, GenServer.call(pid, :peers)}
    end
  end

  @doc "Starts the announcer and listener with the runner's configuration."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(config), do: GenServer.start_link(__MODULE__, Map.new(config), name: __MODULE__)

  @impl GenServer
  def init(config) do
    config = Map.merge(defaults(), config)
    config = %{config | multicast_ttl: config.multicast_ttl || config.ttl}
    Logger.metadata(topology: __MODULE__)
    # An exit from a process linked to it is a message, not its end.
    Process.flag(:trap_exit, true)

    case :gen_udp.open(config.port, socket_options(config)) do
      {:ok, socket} ->
        send(self(), :announce)

        {:ok,
         %{
           config: config,
           socket: socket,
           peers: %{},
           last_ts: %{},
           admitted: MapSet.new(),
           full_logged: false
         }}

      {:error, reason} ->
        # {:shutdown, _}: a refusal to start, not a crash to report.
        {:stop, {:shutdown, open_error(reason, config)}}
    end
  end

  @impl GenServer
  def handle_call(:peers, _from, state) do
    peers = for {name, _} <- state.peers, do: String.to_atom(name)
    {:reply, peers, state}
  end

  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl GenServer
  def handle_cast(_request, state), do: {:noreply, state}

  @impl GenServer
  def handle_info(:announce, state) do
    state = forget_quiet(state)
    announce(state)
    Process.send_after(self(), :announce, state.config.announce_interval)
    {:noreply, state}
  end

  def handle_info({:udp, _socket, ip, _port, data}, state) do
    {:noreply, receive_packet(data, ip, state)}
  end

  # The socket is linked to this process: it closing is this process's end.
  def handle_info({:EXIT, socket, reason}, %{socket: socket} = state),
    do: {:stop, reason, state}

  def handle_info(_other, state), do: {:noreply, state}

  defp open_error(:eaddrinuse, config),
    do:
      "UDP port #{config.port} is held by another program that does not share it; set port: to a free port (the same on every node) or stop that program"

  defp open_error(:eaddrnotavail, config),
    do:
      "#{:inet.ntoa(config.ip)} (ip:) or #{:inet.ntoa(config.multicast_if)} (multicast_if:) is not an address of this host; set it to one, or to \"0.0.0.0\""

  defp open_error(reason, config),
    do: "cannot open UDP port #{config.port}: #{inspect(reason)}"

  defp defaults do
    DynamicSrv.Config.defaults(@schema)
  end

  defp socket_options(%{mode: :multicast} = c) do
    [
      :binary,
      active: true,
      reuseaddr: true,
      ip: c.ip,
      multicast_loop: true,
      multicast_ttl: c.multicast_ttl,
      multicast_if: c.multicast_if,
      add_membership: {c.multicast_addr, c.multicast_if}
    ]
  end

  defp socket_options(%{mode: :broadcast} = c),
    do: [:binary, active: true, reuseaddr: true, broadcast: true, ip: c.ip]

  defp announce(state) do
    if Node.alive?() do
      name = Atom.to_string(node())
      packet = Packet.encode(name, now(), dist_port(), state.config.secret)
      :gen_udp.send(state.socket, destination(state.config), state.config.port, packet)
    end
  end

  defp destination(%{mode: :multicast, multicast_addr: addr}), do: addr
  defp destination(%{mode: :broadcast, broadcast_addr: addr}), do: addr

  defp dist_port do
    case DynamicSrv.Env.dist_port() do
      {:ok, port} -> port
      {:error, _} -> 0
    end
  end

  defp receive_packet(data, ip, state) do
    with {:ok, packet} <- Packet.decode(data, state.config.secret),
         :ok <- not_self(packet),
         :ok <- fresh(packet, state),
         {:ok, state} <- admit(packet.name, state) do
      remember(packet, ip, state)
    else
      {:drop, state} -> state
      _dropped -> state
    end
  end

  defp not_self(%{name: name}),
    do: if(name == Atom.to_string(node()), do: {:error, :self}, else: :ok)

  # With a secret, timestamps must be recent and strictly increasing per name.
  defp fresh(_packet, %{config: %{secret: nil}}), do: :ok

  defp fresh(%{name: name, timestamp: ts}, %{config: config, last_ts: last_ts}) do
    cond do
      abs(now() - ts) > config.max_skew -> {:error, :stale}
      ts <= Map.get(last_ts, name, -1) -> {:error, :replayed}
      true -> :ok
    end
  end

  defp admit(name, state) do
    cond do
      Map.has_key?(state.peers, name) ->
        {:ok, state}

      map_size(state.peers) >= state.config.max_peers ->
        {:error, :full}

      MapSet.member?(state.admitted, name) ->
        {:ok, state}

      MapSet.size(state.admitted) < @admitted_factor * state.config.max_peers ->
        {:ok, %{state | admitted: MapSet.put(state.admitted, name)}}

      state.full_logged ->
        {:error, :admitted_full}

      true ->
        Logger.warning(
          "DynamicSrv.Via.Udp has admitted #{MapSet.size(state.admitted)} distinct names and ignores new ones; set a secret, raise max_peers or restart the node"
        )

        {:drop, %{state | full_logged: true}}
    end
  end

  defp remember(%{name: name, timestamp: ts, dist_port: port}, ip, state) do
    if port > 0 do
      DynamicSrv.PortBook.put_srv(name, port, [ip], state.config.forget_after)
    end

    %{
      state
      | peers: Map.put(state.peers, name, System.monotonic_time(:millisecond)),
        last_ts: Map.put(state.last_ts, name, ts)
    }
  end

  defp forget_quiet(state) do
    now_mono = System.monotonic_time(:millisecond)
    horizon = now() - state.config.max_skew

    %{
      state
      | peers:
          Map.reject(state.peers, fn {_, seen} -> now_mono - seen > state.config.forget_after end),
        last_ts: Map.reject(state.last_ts, fn {_, ts} -> ts < horizon end)
    }
  end

  defp now, do: System.os_time(:millisecond)
end
