defmodule DynamicSrv.PortBook do
  @moduledoc """
  A node-name to address and port book that lets `DynamicSrv.Epmd` answer
  without asking DNS again.

  Two writers fill it: the membership engine, from each successful SRV poll
  (the port, and the target's addresses when the server sent them in the
  additional section), and `DynamicSrv.Epmd` itself, which keeps each DNS
  answer for a short while so that one connection attempt costs one round of
  DNS although OTP asks for the address twice.

  Entries expire; a miss falls back to DNS. The table is public and owned by
  a small process that `DynamicSrv.Epmd.start_link/0` starts under the
  kernel's `net_sup`. When the node does not use `DynamicSrv.Epmd`, there is
  no table and writes are no-ops.
  """
  use GenServer

  @table __MODULE__
  @sweep_every 10_000

  @type family :: :inet | :inet6
  @type answer :: {:ok, :inet.ip_address() | nil, :inet.port_number()} | {:error, term()}

  @doc false
  def start_link do
    case GenServer.start_link(__MODULE__, [], name: __MODULE__) do
      {:error, {:already_started, pid}} -> {:ok, pid}
      other -> other
    end
  end

  @doc """
  Records `answer` for the node `name` (a `"name@host"` string) and
  `family`, valid for `ttl_ms`. An address of `nil` records the port only.
  """
  @spec put(String.t(), family(), answer(), non_neg_integer()) :: :ok
  def put(name, family, answer, ttl_ms) do
    if :ets.whereis(@table) != :undefined do
      :ets.insert(@table, {{name, family}, answer, now() + ttl_ms})
    end

    :ok
  end

  @doc """
  Records what an SRV answer says about the node `name`: its port and, for
  each family, the address the server sent, else the address already known
  for that node (an answer cut short leaves some targets without one).
  """
  @spec put_srv(String.t(), :inet.port_number(), [:inet.ip_address()], non_neg_integer()) :: :ok
  def put_srv(name, port, addresses, ttl_ms) do
    for family <- [:inet, :inet6] do
      address = Enum.find(addresses, &(family_of(&1) == family)) || known_address(name, family)
      put(name, family, {:ok, address, port}, ttl_ms)
    end

    :ok
  end

  @doc """
  Adds `address` to the live entry of `name` and `family` (found by an A or
  AAAA lookup), keeping its port and expiry. Returns `false` without a live
  entry.
  """
  @spec put_address(String.t(), family(), :inet.ip_address()) :: boolean()
  def put_address(name, family, address) do
    case :ets.lookup(@table, {name, family}) do
      [{key, {:ok, _, port}, expires}] ->
        :ets.insert(@table, {key, {:ok, address, port}, expires})

      _ ->
        false
    end
  rescue
    ArgumentError -> false
  end

  @doc "Whether the live entry of `name` lacks an address of `family`."
  @spec missing_address?(String.t(), family()) :: boolean()
  def missing_address?(name, family) do
    case fetch(name, family) do
      {:ok, address, _} -> address == nil
      _ -> true
    end
  end

  defp known_address(name, family) do
    now = now()

    case :ets.lookup(@table, {name, family}) do
      [{_, {:ok, address, _}, expires}] when expires > now -> address
      _ -> nil
    end
  rescue
    ArgumentError -> nil
  end

  @doc "Whether the book exists (this node runs `DynamicSrv.Epmd`)."
  @spec enabled?() :: boolean()
  def enabled?, do: :ets.whereis(@table) != :undefined

  @doc """
  Marks `key` for `ttl_ms`: a fact worth remembering for a while, e.g. that
  a host has no per-node SRV records (`{host, :no_node_srv}`).
  """
  @spec mark(term(), non_neg_integer()) :: :ok
  def mark(key, ttl_ms) do
    if enabled?(), do: :ets.insert(@table, {{:mark, key}, true, now() + ttl_ms})
    :ok
  end

  @spec marked?(term()) :: boolean()
  def marked?(key), do: lookup({:mark, key}) == true

  @doc "The live entry for `name` and `family`, or `:miss`."
  @spec fetch(String.t(), family()) :: answer() | :miss
  def fetch(name, family), do: lookup({name, family})

  defp lookup(key) do
    now = now()

    case :ets.lookup(@table, key) do
      [{_, value, expires}] when expires > now -> value
      _ -> :miss
    end
  rescue
    ArgumentError -> :miss
  end

  @spec family_of(:inet.ip_address()) :: family()
  def family_of(address) when tuple_size(address) == 4, do: :inet
  def family_of(address) when tuple_size(address) == 8, do: :inet6

  @impl true
  def init([]) do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    Process.send_after(self(), :sweep, @sweep_every)
    {:ok, nil}
  end

  @impl true
  def handle_info(:sweep, state) do
    now = now()
    :ets.select_delete(@table, [{{:_, :_, :"$1"}, [{:"=<", :"$1", now}], [true]}])
    Process.send_after(self(), :sweep, @sweep_every)
    {:noreply, state}
  end

  defp now, do: System.monotonic_time(:millisecond)
end
