defmodule DynamicSrv.Config do
  @moduledoc """
  Validates keyword configuration against a small schema, so that the
  strategy and the standalone runner reject a bad value in the same way:
  with one message naming the key, the value and what is expected.

  A schema is a keyword list of `key => {type, default}`; a default of
  `:required` makes the key mandatory. The package's own schemas also say
  what each key means, `{type, default, meaning}`, and how the default
  reads when its value would not (`{type, default, meaning, shown}`): their
  modules' key tables are made from them by `table/1`, so a key, its
  default and its documentation have one home. Types:

  | type | accepts |
  | --- | --- |
  | `:string` | a non-empty string (a charlist is converted) |
  | `:pos_integer` | an integer > 0 |
  | `:boolean` | `true` or `false` |
  | `{:in, values}` | one of `values` |
  | `{:fun, arity}` | a function of that arity |
  | `:nameservers` | a non-empty list of `{ip_tuple, port}` naming DNS servers (no unspecified, broadcast or multicast address) |
  | `:module` | a loaded module |
  | `:port` | an integer in 1..65535 |
  | `:mfa` | `{module, function, args}` |
  | `:ip` | an IP tuple or its text form (`"230.1.1.251"`), converted to a tuple |
  | `:nodes` | a list of node names (`:"name@host"` or `"name@host"`, by the rule of `DynamicSrv.Naming`), converted to atoms |
  | `:nodes_ports` | as `:nodes`, each name alone or as `{name, port}` |
  | `{:label, max}` | a string of `a-z A-Z 0-9 _ -`, at most `max` bytes |
  | `{:secret, min}` | a binary of at least `min` bytes |
  | `:any` | anything |

  Keys outside the schema are kept as they are (providers read their own).
  """

  alias DynamicSrv.Naming

  @type type :: atom() | tuple()
  @type entry ::
          {type(), term()}
          | {type(), term(), String.t()}
          | {type(), term(), String.t(), String.t()}
  @type schema :: keyword(entry())

  @spec validate(keyword(), schema(), String.t()) :: {:ok, map()} | {:error, String.t()}
  def validate(config, schema, context) when is_list(config) do
    Enum.reduce_while(schema, {:ok, Map.new(config)}, fn {key, entry}, {:ok, acc} ->
      type = elem(entry, 0)

      case {Map.fetch(acc, key), elem(entry, 1)} do
        {:error, :required} ->
          {:halt, {:error, "#{context}: the #{inspect(key)} key is required (#{describe(type)})"}}

        {:error, default} ->
          {:cont, {:ok, Map.put(acc, key, default)}}

        {{:ok, nil}, default} when default != :required ->
          {:cont, {:ok, Map.put(acc, key, default)}}

        {{:ok, value}, _} ->
          case check(type, value) do
            {:ok, value} ->
              {:cont, {:ok, Map.put(acc, key, value)}}

            :error ->
              {:halt,
               {:error,
                "#{context}: #{inspect(key)} is #{inspect(value, limit: 10)}, expected #{describe(type)}"}}

            {:error, reason} ->
              {:halt,
               {:error, "#{context}: #{inspect(key)} is #{inspect(value, limit: 10)}: #{reason}"}}
          end
      end
    end)
  end

  def validate(config, _schema, context),
    do:
      {:error,
       "#{context}: the configuration is #{inspect(config, limit: 10)}, expected a keyword list"}

  @doc "The defaults of `schema`, by key (`:required` for a required key)."
  @spec defaults(schema()) :: %{atom() => term()}
  def defaults(schema), do: Map.new(schema, fn {key, entry} -> {key, elem(entry, 1)} end)

  @doc """
  The Markdown table of `schema`'s keys (key, meaning, default), for a
  moduledoc.
  """
  @spec table(schema()) :: String.t()
  def table(schema) do
    rows = for {key, entry} <- schema, do: "| `#{key}` | #{meaning(entry)} | #{shown(entry)} |"
    Enum.join(["| key | meaning | default |", "| --- | --- | --- |" | rows], "\n")
  end

  defp meaning({_type, _default}), do: ""
  defp meaning(entry), do: elem(entry, 2)

  defp shown({_type, _default, _meaning, shown}), do: shown
  defp shown(entry), do: shown_default(elem(entry, 1))

  defp shown_default(:required), do: "required"
  defp shown_default(nil), do: "none"
  defp shown_default(value), do: "`#{inspect(value)}`"

  defp check(:string, value) when is_binary(value) and value != "", do: {:ok, value}

  defp check(:string, [_ | _] = value) do
    if List.ascii_printable?(value), do: {:ok, List.to_string(value)}, else: :error
  end

  defp check(:pos_integer, value) when is_integer(value) and value > 0, do: {:ok, value}
  defp check(:boolean, value) when is_boolean(value), do: {:ok, value}
  defp check(:any, value), do: {:ok, value}
  defp check({:fun, arity}, value) when is_function(value, arity), do: {:ok, value}

  defp check({:in, values}, value), do: if(value in values, do: {:ok, value}, else: :error)

  defp check(:module, value) when is_atom(value),
    do: if(Code.ensure_loaded?(value), do: {:ok, value}, else: :error)

  # The shape here; what makes an address a server (no 0.0.0.0, broadcast
  # or multicast, at most 16) is the one rule in Rust that
  # DYNAMIC_SRV_NAMESERVERS and the lookups follow too.
  defp check(:nameservers, [_ | _] = value) do
    with true <- Enum.all?(value, &nameserver?/1),
         :ok <- DynamicSrv.Resolver.check_nameservers(value) do
      {:ok, value}
    else
      false -> :error
      {:error, reason} -> {:error, reason}
    end
  end

  defp check(:mfa, {m, f, a} = value) when is_atom(m) and is_atom(f) and is_list(a),
    do: {:ok, value}

  defp check(:port, value) when is_integer(value) and value in 1..65535, do: {:ok, value}

  defp check(:ip, value) when is_tuple(value),
    do: if(is_list(:inet.ntoa(value)), do: {:ok, value}, else: :error)

  defp check(:ip, value) when is_binary(value) do
    case :inet.parse_strict_address(String.to_charlist(value)) do
      {:ok, ip} -> {:ok, ip}
      {:error, _} -> :error
    end
  end

  # Node names and labels follow DynamicSrv.Naming's rule, checked before
  # any atom is made.
  defp check(:nodes, value) when is_list(value) do
    if Enum.all?(value, &Naming.node_name?/1),
      do: {:ok, Enum.map(value, &to_node/1)},
      else: :error
  end

  defp check(:nodes_ports, value) when is_list(value) do
    if Enum.all?(value, &node_port?/1),
      do: {:ok, Enum.map(value, &to_node_port/1)},
      else: :error
  end

  defp check({:label, max}, value),
    do: if(Naming.check_label(value, max) == :ok, do: {:ok, value}, else: :error)

  defp check({:secret, min}, value) when is_binary(value) and byte_size(value) >= min,
    do: {:ok, value}

  defp check(_type, _value), do: :error

  defp node_port?({node, port}) when is_integer(port) and port in 1..65535,
    do: Naming.node_name?(node)

  defp node_port?(node), do: Naming.node_name?(node)

  defp to_node_port({node, port}), do: {to_node(node), port}
  defp to_node_port(node), do: to_node(node)

  defp to_node(node) when is_atom(node), do: node
  defp to_node(node), do: String.to_atom(node)

  defp nameserver?({ip, port}) when is_tuple(ip) and is_integer(port) and port in 1..65535,
    do: is_list(:inet.ntoa(ip))

  defp nameserver?(_), do: false

  defp describe(:string), do: "a non-empty string"
  defp describe(:pos_integer), do: "a positive integer"
  defp describe(:boolean), do: "true or false"
  defp describe(:any), do: "any value"
  defp describe(:mfa), do: "{module, function, args}"
  defp describe(:port), do: "an integer in 1..65535"
  defp describe(:ip), do: "an IP address, as a tuple or a string"

  defp describe(:nodes),
    do:
      ~s(a list of node names such as :"app@host" or "app@host" \(name of a-z, A-Z, 0-9, _ and -\))

  defp describe(:nodes_ports),
    do: ~s(a list of node names such as :"app@host" or "app@host", each alone or as {name, port})

  defp describe({:label, max}), do: "a name of a-z, A-Z, 0-9, _ and -, at most #{max} bytes"
  defp describe({:secret, min}), do: "a binary of at least #{min} bytes"
  defp describe({:fun, arity}), do: "a function of arity #{arity}"
  defp describe({:in, values}), do: "one of #{Enum.map_join(values, ", ", &inspect/1)}"
  defp describe(:module), do: "the name of a loaded module"

  defp describe(:nameservers),
    do: "a non-empty list of {ip_tuple, port}, e.g. [{{127, 0, 0, 1}, 8600}]"
end
