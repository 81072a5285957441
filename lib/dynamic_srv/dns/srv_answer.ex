defmodule DynamicSrv.SrvAnswer do
  @moduledoc false
  # The one rule from an SRV answer to nodes and port-book entries, used by
  # the SRV poll (the strategy and `DynamicSrv.Via.Srv`) and by
  # `DynamicSrv.Epmd`:
  #
  # - a record with port 0 names no target (RFC 2782's "not available");
  # - a target names a node by `DynamicSrv.Naming`'s rule, under the service;
  # - every record of a node counts: a node restarted on a new port while
  #   its old registration lingers has two, and the book keeps both ports,
  #   with every address the server sent for the node's targets.
  #
  # Node names stay strings here: nothing creates an atom
  # (`DynamicSrv.NodeAtoms` does that, boundedly, for the poll).

  alias DynamicSrv.{Naming, PortBook, Resolver}

  @typedoc "A node name (`\"label@service\"`) and its records, in answer order."
  @type entry :: {String.t(), [Resolver.srv_record(), ...]}
  @typedoc "A target left out, with the reason."
  @type ignored :: {String.t(), String.t()}

  @doc """
  The nodes `records` name under `service`, one entry per node in the order
  of its first record, and the targets left out with the reason for each.
  """
  @spec nodes([Resolver.srv_record()], String.t()) ::
          {:ok, [entry()], [ignored()]} | {:error, String.t()}
  def nodes(records, service) do
    {usable, port_zero} = Enum.split_with(records, &(&1.port != 0))

    with {:ok, names} <- Naming.node_names(Enum.map(usable, & &1.target), service) do
      {entries, ignored} = group(Enum.zip(usable, names))
      {:ok, entries, ignored ++ Enum.map(port_zero, &{&1.target, "port 0"})}
    end
  end

  defp group(named) do
    {order, by_node, ignored} =
      Enum.reduce(named, {[], %{}, []}, fn
        {record, {:ok, node}}, {order, by_node, ignored} ->
          case by_node do
            %{^node => own} -> {order, %{by_node | node => [record | own]}, ignored}
            %{} -> {[node | order], Map.put(by_node, node, [record]), ignored}
          end

        {record, {:error, reason}}, {order, by_node, ignored} ->
          {order, by_node, [{record.target, reason} | ignored]}
      end)

    entries = order |> Enum.reverse() |> Enum.map(&{&1, Enum.reverse(Map.fetch!(by_node, &1))})
    {entries, Enum.reverse(ignored)}
  end

  @doc "Books each entry's ports and addresses in the port book for `ttl_ms`."
  @spec book([entry()], non_neg_integer()) :: :ok
  def book(entries, ttl_ms) do
    Enum.each(entries, fn {node, records} ->
      PortBook.put_srv(node, Enum.map(records, & &1.port), addresses(records), ttl_ms)
    end)
  end

  @doc "Every address the server sent for the records' targets."
  @spec addresses([Resolver.srv_record()]) :: [:inet.ip_address()]
  def addresses(records), do: records |> Enum.flat_map(& &1.addresses) |> Enum.uniq()
end
