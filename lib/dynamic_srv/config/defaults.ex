defmodule DynamicSrv.Defaults do
  @moduledoc """
  The defaults that more than one part of the package uses, each defined
  once: the strategy, the runner, the providers, the membership engine, the
  resolver and the environment read them from here, and their config
  tables quote them.

  | default | value |
  | --- | --- |
  | `max_nodes/0` | the most node names (hence atoms) taken from one answer: `1024` |
  | `book_ttl/1` | how long the port book keeps what a poll found: three polling intervals, at least 30 s |
  | `attempt_ttl/0` | how long `DynamicSrv.Epmd` keeps what one connection attempt found (OTP asks twice per attempt): `1000` ms |
  | `polling_interval/0` | the strategy's ms between polls: `5000` |
  | `timeout/0` | the deadline of one DNS lookup: `3000` ms |
  | `attempts/0` | tries per nameserver within that deadline: `2` |
  | `protocol/0` | `:udp`, truncated answers retried over TCP |
  | `connect/0`, `disconnect/0`, `list_nodes/0` | libcluster's MFAs: `:net_kernel.connect_node/1`, `:erlang.disconnect_node/1`, `:erlang.nodes(:connected)` |
  """

  @spec max_nodes() :: pos_integer()
  def max_nodes, do: 1024

  @doc """
  Three polling intervals, at least 30 s: while polls fail (a DNS server
  overloaded as a large cluster starts), connection setups keep using the
  ports found last instead of each asking DNS; a successful poll replaces
  them at once.
  """
  @spec book_ttl(pos_integer()) :: pos_integer()
  def book_ttl(interval_ms), do: max(3 * interval_ms, 30_000)

  @spec attempt_ttl() :: pos_integer()
  def attempt_ttl, do: 1_000

  @spec polling_interval() :: pos_integer()
  def polling_interval, do: 5_000

  @spec timeout() :: pos_integer()
  def timeout, do: 3_000

  @spec attempts() :: pos_integer()
  def attempts, do: 2

  @spec protocol() :: :udp | :tcp
  def protocol, do: :udp

  @spec connect() :: mfa_args()
  def connect, do: {:net_kernel, :connect_node, []}

  @spec disconnect() :: mfa_args()
  def disconnect, do: {:erlang, :disconnect_node, []}

  @spec list_nodes() :: mfa_args()
  def list_nodes, do: {:erlang, :nodes, [:connected]}

  @typedoc "A module, a function and the arguments before the node."
  @type mfa_args :: {module(), atom(), list()}
end
