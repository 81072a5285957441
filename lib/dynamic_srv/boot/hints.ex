defmodule DynamicSrv.Hints do
  @moduledoc false
  # Short-lived facts that spare a DNS query or a probe, kept apart from the
  # port book (in `DynamicSrv.PortBook.Tables`' second table):
  #
  # | fact | written by | read by |
  # | --- | --- | --- |
  # | the port chosen for a node with several ports, and whose turn is next | `DynamicSrv.Epmd` (its port choice) | `DynamicSrv.Epmd`, so both asks of one connection attempt get one port |
  # | an SRV query's answer was completed over TCP | the SRV poll (`DynamicSrv.SrvPoll`, which keeps this fact itself) | the SRV poll, so that is done once per book lifetime |
  #
  # Like the port book, nothing here is needed for correctness: a missing
  # fact costs one more query, and without `DynamicSrv.Epmd` nothing is kept.

  alias DynamicSrv.PortBook.Tables

  @type family :: :inet | :inet6

  @doc "Keeps the address and port chosen for `node` and `family` for `ttl_ms`."
  @spec put_port_choice(
          String.t(),
          family(),
          {:inet.ip_address(), :inet.port_number()},
          non_neg_integer()
        ) ::
          :ok
  def put_port_choice(node, family, {_ip, _port} = choice, ttl_ms),
    do: Tables.put(__MODULE__, {:port_choice, node, family}, choice, ttl_ms)

  @doc "The live choice kept by `put_port_choice/4`, or `:miss`."
  @spec port_choice(String.t(), family()) :: {:inet.ip_address(), :inet.port_number()} | :miss
  def port_choice(node, family), do: Tables.get(__MODULE__, {:port_choice, node, family})

  @doc """
  Counts the connection attempts to `node` over `family` that had to choose
  among several ports, returning the count before this one (0, 1, 2, ...);
  0 without `DynamicSrv.Epmd`.
  """
  @spec next_turn(String.t(), family()) :: non_neg_integer()
  def next_turn(node, family), do: Tables.count(__MODULE__, {:turn, node, family})
end
