defmodule DynamicSrv.Via.List do
  @schema [
    node_list:
      {:nodes_ports, :required,
       "node names, as atoms or `\"name@host\"` strings, each alone or as `{name, port}`"}
  ]

  @moduledoc """
  A provider with a fixed list of nodes, for development (several `iex`
  shells on one machine) or a static set of hosts.

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.List,
        node_list: [:"app1@127.0.0.1", :"app2@127.0.0.1"]

  #{DynamicSrv.Config.table(@schema)}

  ## Nodes on one machine with `DynamicSrv.Epmd`

  Without DNS, `DynamicSrv.Epmd` dials a node named after an IP address
  (`a@127.0.0.1`) on this node's own `ERL_DIST_PORT`: right when every node
  has a host of its own and they share one port, wrong on one laptop, where
  it dials this node itself. Give each such node its port:

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.List,
        node_list: [{:"a@127.0.0.1", 4371}, {:"b@127.0.0.1", 4372}]

  Each poll writes the port, with the host's address (the host itself when
  it is an IP address, else what the system resolver gives for it), into
  the `DynamicSrv.PortBook` for three polling intervals, so the node is
  dialled there with no DNS at all. Without `DynamicSrv.Epmd` there is no
  port book and the port is ignored: epmd knows every node's port.
  """
  @behaviour DynamicSrv.Provider

  alias DynamicSrv.{Defaults, PortBook}

  @impl true
  def schema, do: @schema

  @impl true
  def poll(config) do
    ttl = Defaults.book_ttl(config.interval_ms)

    {:ok,
     Enum.map(config.node_list, fn
       {node, port} ->
         book(node, port, ttl)
         node

       node ->
         node
     end)}
  end

  defp book(node, _port, _ttl) when node == node(), do: :ok

  defp book(node, port, ttl) do
    if PortBook.enabled?() do
      name = Atom.to_string(node)
      [_, host] = String.split(name, "@", parts: 2)
      PortBook.put_srv(name, port, addresses(String.to_charlist(host)), ttl)
    end

    :ok
  end

  defp addresses(host) do
    case :inet.parse_strict_address(host) do
      {:ok, ip} ->
        [ip]

      {:error, _} ->
        for family <- [:inet, :inet6],
            {:ok, ip} <- [:inet.getaddr(host, family)],
            do: ip
    end
  end
end
