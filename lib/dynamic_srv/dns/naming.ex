defmodule DynamicSrv.Naming do
  @moduledoc """
  The package's one naming rule, implemented in Rust (`naming.rs` of the
  core crate) and asked through the NIF: the strategy, `DynamicSrv.Epmd`,
  the UDP provider and configuration validation all use it, so a name one
  of them accepts, every other accepts too.

  | rule | accepts |
  | --- | --- |
  | SRV target of a service | `<label>.<service>` (label `[a-z0-9_-]+`, any case, the service compared literally and case-insensitively, a trailing dot allowed): the node `<label>@<service>`, the label in lowercase |
  | node name | `name@host`, the name of `A-Z a-z 0-9 _ -` (OTP's rule), the host a DNS name or an IP address (`A-Z a-z 0-9 _ . : -`), at most 255 bytes |
  | label | `A-Z a-z 0-9 _ -`, 1 to a given length |
  | release helper | `rem-<id>-<node>` or `rpc-<id>-<node>` works for `<node>` |

  Nothing here creates an atom; the SRV poll turns validated names into
  atoms, at most `max_nodes` per answer.
  """

  @doc """
  The node name of each SRV target under `service`, in order: `{:ok, name}`
  or `{:error, reason}` per target, or `{:error, reason}` when the service
  itself is not a DNS name.
  """
  @spec node_names([String.t()], String.t()) ::
          {:ok, [{:ok, String.t()} | {:error, String.t()}]} | {:error, String.t()}
  def node_names(targets, service) do
    chunk = DynamicSrv.Native.limits().max_targets_per_call

    targets
    |> Enum.chunk_every(chunk)
    |> Enum.reduce_while({:ok, []}, fn part, {:ok, acc} ->
      case DynamicSrv.Native.node_names(part, to_string(service)) do
        {:ok, parsed} -> {:cont, {:ok, [parsed | acc]}}
        {:error, reason} -> {:halt, {:error, message(reason)}}
      end
    end)
    |> case do
      {:ok, parts} ->
        {:ok, parts |> Enum.reverse() |> Enum.concat() |> Enum.map(&with_message/1)}

      error ->
        error
    end
  end

  @doc "Checks a node name (`name@host`) given as a string or an atom."
  @spec check_node_name(String.t() | atom()) :: :ok | {:error, String.t()}
  def check_node_name(node) when is_atom(node), do: check_node_name(Atom.to_string(node))

  def check_node_name(node) when is_binary(node) do
    case DynamicSrv.Native.check_node_name(node) do
      {:ok, _} -> :ok
      {:error, reason} -> {:error, message(reason)}
    end
  end

  def check_node_name(_node), do: {:error, "a node name is an atom or a string"}

  @doc "Whether `node` is a node name by the rule above."
  @spec node_name?(term()) :: boolean()
  def node_name?(node), do: check_node_name(node) == :ok

  @doc "Checks a label of `A-Z a-z 0-9 _ -`, 1 to `max` bytes long."
  @spec check_label(term(), pos_integer()) :: :ok | {:error, String.t()}
  def check_label(label, max) when is_binary(label) do
    case DynamicSrv.Native.check_label(label, max) do
      {:ok, _} -> :ok
      {:error, reason} -> {:error, message(reason)}
    end
  end

  def check_label(_label, _max), do: {:error, "a label is a string"}

  @doc """
  The node name a release helper node (`rem-<id>-<node>`, `rpc-<id>-<node>`)
  works for, or `nil` for any other name (the part before the `@`).
  """
  @spec helper_of(String.t()) :: String.t() | nil
  def helper_of(name) when is_binary(name), do: DynamicSrv.Native.helper_of(name)

  @doc "Whether `name` (the part before the `@`) is a release helper's."
  @spec helper?(String.t()) :: boolean()
  def helper?(name), do: helper_of(name) != nil

  defp with_message({:ok, _} = ok), do: ok
  defp with_message({:error, reason}), do: {:error, message(reason)}

  defp message({_kind, message}) when is_binary(message), do: message
  defp message(reason), do: inspect(reason)
end
