defmodule DynamicSrv.Target do
  @moduledoc """
  Turns SRV targets into node names, with the parsing done in Rust.

  A target `<label>.<service-domain>` (label `[a-z0-9_-]+`, any case, the
  domain compared literally, a trailing dot allowed) names the node
  `:"<label>@<service-domain>"`. Any other target is ignored with a reason.

  Atoms are created only for names that passed validation, and at most
  `max_nodes` per call, so a hostile or broken DNS answer cannot fill the
  atom table.
  """

  # Keeps each NIF call well under a millisecond.
  @chunk 500

  @type ignored :: {String.t(), String.t()}

  @doc """
  Pairs `{target, node}` for `targets` under `service`, in answer order with
  one pair per node, and the targets that were ignored with the reason for
  each.
  """
  @spec to_nodes([String.t()], String.t(), pos_integer()) ::
          {:ok, [{String.t(), node()}], [ignored()]} | {:error, String.t()}
  def to_nodes(targets, service, max_nodes) do
    targets = Enum.map(targets, &to_string/1)

    with {:ok, parsed} <- parse(targets, service) do
      {pairs, ignored} = collect(Enum.zip(targets, parsed), max_nodes)
      {:ok, pairs, ignored}
    end
  end

  defp parse(targets, service) do
    targets
    |> Enum.chunk_every(@chunk)
    |> Enum.reduce_while({:ok, []}, fn chunk, {:ok, acc} ->
      case DynamicSrv.Native.parse_targets(chunk, service) do
        {:ok, parsed} -> {:cont, {:ok, [parsed | acc]}}
        {:error, _} = error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, chunks} -> {:ok, chunks |> Enum.reverse() |> Enum.concat()}
      error -> error
    end
  end

  defp collect(parsed, max_nodes) do
    {names, ignored, _seen} =
      Enum.reduce(parsed, {[], [], MapSet.new()}, fn
        {target, {:ok, name}}, {names, ignored, seen} ->
          cond do
            MapSet.member?(seen, name) ->
              {names, ignored, seen}

            MapSet.size(seen) >= max_nodes ->
              {names, [{target, "over max_nodes (#{max_nodes})"} | ignored], seen}

            true ->
              {[{target, name} | names], ignored, MapSet.put(seen, name)}
          end

        {target, {:error, reason}}, {names, ignored, seen} ->
          {names, [{target, reason} | ignored], seen}
      end)

    # Only validated names, at most max_nodes of them, become atoms.
    pairs =
      names |> Enum.reverse() |> Enum.map(fn {target, name} -> {target, String.to_atom(name)} end)

    {pairs, Enum.reverse(ignored)}
  end
end
