defmodule DynamicSrv.DeferredConfig do
  @moduledoc """
  Resolves configuration values that are only known when a release starts.

  The runner resolves its whole configuration with `resolve/1` at
  application start, so every key (also a custom provider's) can take one
  of these forms, at any depth of lists, keyword lists, tuples and maps:

  | form | value |
  | --- | --- |
  | `{:system, "VAR"}` | the OS environment variable; an error when it is unset |
  | `{:system, "VAR", default}` | the variable, or `default` when it is unset |
  | `{:system, "VAR", {module, function}}` | the variable passed through `module.function/1` (DeferredConfig's form, as Peerage uses it); an error when it is unset |
  | `{:system, "VAR", default, convert}` | the variable passed through `convert` (a 1-arity function or `{module, function}`), or `default` |
  | `{:apply, {module, function, args}}` | the result of the call |

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Srv,
        service: {:system, "SERVICE_DOMAIN"},
        interval: {:system, "DISCOVERY_INTERVAL", 10, &String.to_integer/1}

  Resolution stops at the first failure with one message naming the key
  path, the variable and the fix.
  """

  @type error :: {:error, String.t()}

  @doc "Resolves every deferred value in `config` (a keyword list)."
  @spec resolve(keyword()) :: {:ok, keyword()} | error()
  def resolve(config) when is_list(config) do
    walk(config, [])
  end

  defp walk({:system, var}, path) when is_binary(var) do
    case System.get_env(var) do
      nil ->
        {:error,
         "#{where(path)}the environment variable #{var} is not set; set it or give a default with {:system, #{inspect(var)}, default}"}

      value ->
        {:ok, value}
    end
  end

  defp walk({:system, var, {m, f} = convert} = form, path)
       when is_binary(var) and is_atom(m) and is_atom(f) do
    if converter?(m, f) do
      with {:ok, value} <- walk({:system, var}, path), do: convert(value, convert, var, path)
    else
      walk({:system, var, form |> elem(2), nil}, path)
    end
  end

  defp walk({:system, var, default}, path) when is_binary(var) do
    walk({:system, var, default, nil}, path)
  end

  defp walk({:system, var, default, convert}, path) when is_binary(var) do
    case System.get_env(var) do
      nil -> {:ok, default}
      value -> convert(value, convert, var, path)
    end
  end

  defp walk({:apply, {m, f, a}}, path) when is_atom(m) and is_atom(f) and is_list(a) do
    {:ok, apply(m, f, a)}
  rescue
    e ->
      {:error, "#{where(path)}{:apply, #{inspect({m, f, a})}} raised: #{Exception.message(e)}"}
  end

  defp walk(list, path) when is_list(list) do
    list
    |> Enum.with_index()
    |> Enum.reduce_while({:ok, []}, fn {item, index}, {:ok, acc} ->
      item_path = [path_key(item, index) | path]

      case walk_item(item, item_path) do
        {:ok, value} -> {:cont, {:ok, [value | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, items} -> {:ok, Enum.reverse(items)}
      error -> error
    end
  end

  defp walk(%{__struct__: _} = struct, _path), do: {:ok, struct}

  defp walk(map, path) when is_map(map) do
    Enum.reduce_while(map, {:ok, %{}}, fn {key, value}, {:ok, acc} ->
      case walk(value, [key | path]) do
        {:ok, value} -> {:cont, {:ok, Map.put(acc, key, value)}}
        error -> {:halt, error}
      end
    end)
  end

  defp walk(tuple, path) when is_tuple(tuple) do
    with {:ok, items} <- walk(Tuple.to_list(tuple), path), do: {:ok, List.to_tuple(items)}
  end

  defp walk(value, _path), do: {:ok, value}

  # In a keyword list, {key, value} keeps its key and resolves its value.
  defp walk_item({:system, var} = item, path) when is_binary(var), do: walk(item, path)
  defp walk_item({:apply, {_, _, _}} = item, path), do: walk(item, path)

  defp walk_item({key, value}, path) when is_atom(key) do
    with {:ok, value} <- walk(value, path), do: {:ok, {key, value}}
  end

  defp walk_item(item, path), do: walk(item, path)

  defp path_key({key, _}, _index) when is_atom(key), do: key
  defp path_key(_item, index), do: index

  # A {module, function} third element is a converter when the function
  # exists (DeferredConfig's form), otherwise a default that is a tuple.
  defp converter?(m, f), do: Code.ensure_loaded?(m) and function_exported?(m, f, 1)

  defp convert(value, nil, _var, _path), do: {:ok, value}

  defp convert(value, convert, var, path) do
    case convert do
      fun when is_function(fun, 1) -> {:ok, fun.(value)}
      {m, f} when is_atom(m) and is_atom(f) -> {:ok, apply(m, f, [value])}
      other -> {:error, "#{where(path)}#{inspect(other)} is not a conversion function"}
    end
  rescue
    e ->
      {:error,
       "#{where(path)}#{var}=#{inspect(value)} could not be converted: #{Exception.message(e)}"}
  end

  defp where([]), do: ""
  defp where(path), do: "#{path |> Enum.reverse() |> Enum.map_join(".", &to_string/1)}: "
end
