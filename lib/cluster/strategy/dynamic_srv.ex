defmodule Cluster.Strategy.DynamicSrv do
  alias DynamicSrv.Defaults

  @schema DynamicSrv.SrvPoll.schema() ++
            [
              polling_interval:
                {:pos_integer, Defaults.polling_interval(),
                 "ms between polls, plus up to 10% jitter"},
              disconnect_on_deregister:
                {:boolean, true,
                 "disconnect nodes that left DNS; with `false` they stay while their connection lives"},
              fence:
                {:boolean, nil,
                 "when DNS stops listing this node after it had listed it, disconnect the topology's nodes and dial none until it is listed again (see `DynamicSrv.Membership`)",
                 "as `disconnect_on_deregister`"}
            ]

  @moduledoc """
  A libcluster strategy that finds nodes through DNS SRV records and keeps
  the cluster equal to what DNS lists, without losing members when DNS fails.

  It plugs into libcluster 3.x as any strategy does, and also runs without
  libcluster (the package does not depend on it): then the `connect`,
  `disconnect` and `list_nodes` MFAs are applied with the same semantics.

      config :libcluster,
        topologies: [
          dyn_srv: [
            strategy: Cluster.Strategy.DynamicSrv,
            config: [service: "my-service.service.consul", polling_interval: 5_000]
          ]
        ]

  #{DynamicSrv.Config.table(@schema)}

  The membership rules (grace before a disconnect, what a failed lookup
  does, parallel connects) are those of `DynamicSrv.Membership`. Each poll
  also fills the `DynamicSrv.PortBook`, so `DynamicSrv.Epmd` connects to the
  nodes it lists without asking DNS again.

  A state whose `meta` holds nodes already known (a `MapSet` or a list, as
  the published package keeps them) starts with those nodes as members, so a
  node among them that DNS does not list is disconnected by the usual rule
  (two answers in a row).

  A missing `service` or a bad value is logged as one error naming the key
  and the value, and the strategy does not start (`:ignore`); the rest of
  the system keeps running. This differs from the published
  `libcluster_dynamic_srv` package on purpose: there a missing `service`
  crashes the strategy, and libcluster's supervisor with it.
  """
  require Logger

  @doc false
  def child_spec(args),
    do: %{id: __MODULE__, type: :worker, start: {__MODULE__, :start_link, [args]}}

  @doc "Started by libcluster's supervisor with `[%Cluster.Strategy.State{}]`."
  @spec start_link([map()]) :: GenServer.on_start() | :ignore
  def start_link([%{topology: topology, config: config} = state]) do
    case DynamicSrv.Config.validate(
           config || [],
           @schema,
           "Cluster.Strategy.DynamicSrv (topology #{topology})"
         ) do
      {:ok, config} ->
        srv = DynamicSrv.SrvPoll.new(config, Defaults.book_ttl(config.polling_interval))

        DynamicSrv.Membership.start_link(
          topology: topology,
          poll: fn -> DynamicSrv.SrvPoll.poll(srv) end,
          confirm: &DynamicSrv.SrvPoll.confirm(srv, &1),
          log_as: :libcluster,
          interval: config.polling_interval,
          disconnect_removed: config.disconnect_on_deregister,
          fence: config.fence,
          # Nodes a libcluster state already knows (a MapSet or a list).
          members: Map.get(state, :meta) || [],
          connect: Map.get(state, :connect) || Defaults.connect(),
          disconnect: Map.get(state, :disconnect) || Defaults.disconnect(),
          list_nodes: Map.get(state, :list_nodes) || Defaults.list_nodes()
        )

      {:error, message} ->
        Logger.error(message, topology: topology)
        :ignore
    end
  end
end
