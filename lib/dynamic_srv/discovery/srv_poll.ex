defmodule DynamicSrv.SrvPoll do
  @moduledoc false
  # One SRV poll: the query, the answer, the node names and the port book.
  # `Cluster.Strategy.DynamicSrv` and `DynamicSrv.Via.Srv` both poll through
  # this module, with a `%DynamicSrv.SrvPoll{}` built by `new/2` from their
  # keys, validated against `schema/0` (its key table is in the docs of
  # both).
  #
  # What a poll finds stays in the port book for `book_ttl` ms (three
  # polling intervals, at least 30 s: `DynamicSrv.Defaults.book_ttl/1`).
  #
  # Which records name which nodes, and what the port book keeps of them, is
  # `DynamicSrv.SrvAnswer`'s rule, shared with `DynamicSrv.Epmd`: records with
  # port 0 are ignored, and a node listed by several records (e.g. on its old
  # port and its new one after a restart) gets all its ports, among which
  # `DynamicSrv.Epmd` chooses when connecting.
  #
  # NXDOMAIN and an answer without SRV records count as an authoritative empty
  # answer; any other failure is an error, so that the caller keeps its last
  # membership.

  alias DynamicSrv.Defaults

  @schema [
            service:
              {:string, :required,
               "the service domain: SRV targets `<label>.<service>` become nodes `:\"<label>@<service>\"` (label `a-z 0-9 _ -`, any case, lowercased in the node name; the service's dots are literal dots)"},
            query:
              {:string, nil,
               "the SRV name to ask when it is not `service`, e.g. `_my-service._tcp.service.consul`",
               "`service`"},
            resolver:
              {{:fun, 1}, nil,
               "a 1-arity function given the query as a charlist, returning `:inet_res.lookup/4`-shaped SRV tuples; any other return is logged as `Unexpected response from resolver: ...` (the published package's words, so existing log alerts match) and changes nothing",
               "the package's resolver"}
          ] ++
            DynamicSrv.Resolver.schema() ++
            [
              max_nodes:
                {:pos_integer, Defaults.max_nodes(),
                 "the most node names, hence atoms, taken from one answer; from a larger answer, names that already exist as atoms first, then the others in sorted order, so an answer the server rotates gives the same names on every poll"}
            ]

  require Logger

  alias DynamicSrv.{NodeAtoms, PortBook, Resolver, SrvAnswer}
  alias DynamicSrv.PortBook.Tables

  @enforce_keys [:service]
  defstruct service: nil,
            query: nil,
            resolver: nil,
            resolver_opts: [],
            max_nodes: Defaults.max_nodes(),
            book_ttl: Defaults.book_ttl(Defaults.polling_interval())

  @type t :: %__MODULE__{
          service: String.t(),
          query: String.t() | nil,
          resolver: (charlist() -> term()) | nil,
          resolver_opts: [DynamicSrv.Resolver.option()],
          max_nodes: pos_integer(),
          book_ttl: non_neg_integer()
        }

  @doc "The `DynamicSrv.Config` schema of the SRV keys, shared by every SRV user."
  @spec schema() :: DynamicSrv.Config.schema()
  def schema, do: @schema

  @doc """
  The poll settings from keys validated against `schema/0`, the port book
  keeping what a poll finds for `book_ttl` ms.
  """
  @spec new(map(), non_neg_integer()) :: t()
  def new(validated, book_ttl) do
    %__MODULE__{
      service: validated.service,
      query: validated.query,
      resolver: validated.resolver,
      resolver_opts: Resolver.options(validated),
      max_nodes: validated.max_nodes,
      book_ttl: book_ttl
    }
  end

  @doc "Asks DNS and returns the node names the answer lists."
  @spec poll(t()) :: {:ok, [node()]} | {:error, term()}
  def poll(%__MODULE__{} = config) do
    query = config.query || config.service

    with {:ok, records} <- service_lookup(query, config),
         {:ok, entries, ignored} <- SrvAnswer.nodes(records, config.service) do
      {nodes, over} = NodeAtoms.to_atoms(Enum.map(entries, &elem(&1, 0)), config.max_nodes)
      over = MapSet.new(over)
      {left_out, kept} = Enum.split_with(entries, &MapSet.member?(over, elem(&1, 0)))
      reason = "over max_nodes (#{config.max_nodes})"
      log_ignored(ignored ++ for({_, [record | _]} <- left_out, do: {record.target, reason}))
      kept |> complete_addresses(query, config) |> SrvAnswer.book(config.book_ttl)
      {:ok, nodes}
    end
  end

  # A resolver function's error is an unexpected response, as in the
  # published package (logged with its words); it changes no membership.
  defp service_lookup(query, %{resolver: resolver} = config) when is_function(resolver, 1) do
    case lookup(query, config) do
      {:error, {kind, _}} = error when kind in [:unexpected_response, :resolver_crashed] -> error
      {:error, _} = error -> {:error, {:unexpected_response, error}}
      ok -> ok
    end
  end

  defp service_lookup(query, config), do: lookup(query, config)

  @doc """
  Asks DNS about one node by its own name, `<label>.<service>`: `:present`
  when that name has an SRV record with a port or an address record,
  `:absent` when the name does not exist or has neither (and for a node
  that is not of this service), `{:error, reason}` when the lookups fail.
  With a `resolver` function, it is asked that name: `:present` when its
  records name the node, `:absent` when they do not or the name does not
  exist.
  """
  @spec confirm(t(), node()) :: :present | :absent | {:error, term()}
  def confirm(%__MODULE__{} = config, node) do
    case String.split(Atom.to_string(node), "@") do
      [label, service] when service == config.service ->
        ask_by_name(label <> "." <> service, Atom.to_string(node), config)

      _other ->
        :absent
    end
  end

  defp ask_by_name(name, node_name, %{resolver: resolver} = config)
       when is_function(resolver, 1) do
    case lookup(name, config) do
      {:ok, records} ->
        case SrvAnswer.nodes(records, config.service) do
          {:ok, entries, _ignored} ->
            if List.keymember?(entries, node_name, 0), do: :present, else: :absent

          {:error, _} = error ->
            error
        end

      {:error, :nxdomain} ->
        :absent

      {:error, _} = error ->
        error
    end
  end

  defp ask_by_name(name, _node_name, config) do
    case Resolver.lookup_srv(name, config.resolver_opts) do
      {:ok, records} ->
        if Enum.any?(records, &(&1.port != 0)),
          do: :present,
          else: address_of(name, config, [:inet, :inet6])

      {:error, :nxdomain} ->
        :absent

      {:error, :no_data} ->
        address_of(name, config, [:inet, :inet6])

      {:error, _} = error ->
        error
    end
  end

  defp address_of(_name, _config, []), do: :absent

  defp address_of(name, config, [family | rest]) do
    case Resolver.lookup_ip(name, family, config.resolver_opts) do
      {:ok, [_ | _]} -> :present
      {:ok, []} -> address_of(name, config, rest)
      {:error, :no_data} -> address_of(name, config, rest)
      {:error, :nxdomain} -> :absent
      {:error, _} = error -> error
    end
  end

  defp lookup(query, %{resolver: resolver}) when is_function(resolver, 1) do
    case resolver.(String.to_charlist(query)) do
      records when is_list(records) ->
        if Enum.all?(records, &inet_res_srv?/1),
          do: {:ok, Enum.map(records, &from_inet_res/1)},
          else: {:error, {:unexpected_response, records}}

      {:error, _} = error ->
        error

      other ->
        {:error, {:unexpected_response, other}}
    end
  catch
    kind, reason -> {:error, {:resolver_crashed, Exception.format_banner(kind, reason)}}
  end

  defp lookup(query, config) do
    case Resolver.lookup_srv(query, config.resolver_opts) do
      {:ok, records} -> {:ok, records}
      {:error, reason} when reason in [:nxdomain, :no_data] -> {:ok, []}
      {:error, _} = error -> error
    end
  end

  # A server may leave some targets' addresses out of a UDP answer to keep
  # it small (dnsmasq stops at 1232 bytes without setting TC). When the book
  # knows no address for such a node, one query over TCP fetches them all,
  # instead of one A lookup per node and connection later.
  defp complete_addresses(entries, query, config) do
    # A target without any address would otherwise send this query on
    # every poll: once per book lifetime is enough.
    if config.resolver == nil and Enum.any?(entries, &missing_address?/1) and
         claim_tcp_refill(query, config.book_ttl) do
      opts = Keyword.put(config.resolver_opts, :protocol, :tcp)

      case Resolver.lookup_srv(query, opts) do
        {:ok, full} ->
          by_target = Map.new(full, &{&1.target, &1.addresses})

          for {node, records} <- entries,
              do:
                {node,
                 Enum.map(
                   records,
                   &%{&1 | addresses: Map.get(by_target, &1.target, &1.addresses)}
                 )}

        {:error, _} ->
          entries
      end
    else
      entries
    end
  end

  # At most once per `ttl_ms` per query (the call that returns true claims
  # the turn), kept in the hints table; never without DynamicSrv.Epmd, as
  # there is no book to fill.
  defp claim_tcp_refill(query, ttl_ms) do
    if Tables.enabled?() and Tables.get(DynamicSrv.Hints, {:tcp_refill, query}) == :miss do
      Tables.put(DynamicSrv.Hints, {:tcp_refill, query}, true, ttl_ms)
      true
    else
      false
    end
  end

  defp missing_address?({node, records}) do
    SrvAnswer.addresses(records) == [] and PortBook.missing_address?(node, :inet) and
      PortBook.missing_address?(node, :inet6)
  end

  defp inet_res_srv?({p, w, port, target})
       when is_integer(p) and is_integer(w) and is_integer(port) and
              (is_list(target) or is_binary(target)),
       do: true

  defp inet_res_srv?(_), do: false

  defp from_inet_res({priority, weight, port, target}) do
    %{
      priority: priority,
      weight: weight,
      port: port,
      target: to_string(target),
      ttl: 0,
      addresses: []
    }
  rescue
    _ -> %{priority: priority, weight: weight, port: port, target: "", ttl: 0, addresses: []}
  end

  defp log_ignored([]), do: :ok

  defp log_ignored(ignored) do
    Logger.debug(fn ->
      {target, reason} = hd(ignored)
      "ignored #{length(ignored)} SRV target(s), e.g. #{inspect(target)}: #{reason}"
    end)
  end
end
