defmodule DynamicSrv.Config do
  @moduledoc """
  Validates keyword configuration against a small schema, so that the
  strategy and the standalone runner reject a bad value in the same way:
  with one message naming the key, the value and what is expected.

  A schema is a keyword list of `key => {type, default}`; a default of
  `:required` makes the key mandatory. Types:

  | type | accepts |
  | --- | --- |
  | `:string` | a non-empty string (a charlist is converted) |
  | `:pos_integer` | an integer > 0 |
  | `:boolean` | `true` or `false` |
  | `{:in, values}` | one of `values` |
  | `{:fun, arity}` | a function of that arity |
  | `:nameservers` | a non-empty list of `{ip_tuple, port}` |
  | `:module` | a loaded module |
  | `:any` | anything |

  Keys outside the schema are kept as they are (providers read their own).
  """

  @type schema :: keyword({atom() | tuple(), term()})

  @spec validate(keyword(), schema(), String.t()) :: {:ok, map()} | {:error, String.t()}
  def validate(config, schema, context) when is_list(config) do
    Enum.reduce_while(schema, {:ok, Map.new(config)}, fn {key, {type, default}}, {:ok, acc} ->
      case {Map.fetch(acc, key), default} do
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
          end
      end
    end)
  end

  def validate(config, _schema, context),
    do:
      {:error,
       "#{context}: the configuration is #{inspect(config, limit: 10)}, expected a keyword list"}

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

  defp check(:nameservers, [_ | _] = value),
    do: if(Enum.all?(value, &nameserver?/1), do: {:ok, value}, else: :error)

  defp check(_type, _value), do: :error

  defp nameserver?({ip, port}) when is_tuple(ip) and is_integer(port) and port in 1..65535,
    do: is_list(:inet.ntoa(ip))

  defp nameserver?(_), do: false

  defp describe(:string), do: "a non-empty string"
  defp describe(:pos_integer), do: "a positive integer"
  defp describe(:boolean), do: "true or false"
  defp describe(:any), do: "any value"
  defp describe({:fun, arity}), do: "a function of arity #{arity}"
  defp describe({:in, values}), do: "one of #{Enum.map_join(values, ", ", &inspect/1)}"
  defp describe(:module), do: "the name of a loaded module"

  defp describe(:nameservers),
    do: "a non-empty list of {ip_tuple, port}, e.g. [{{127, 0, 0, 1}, 8600}]"
end
