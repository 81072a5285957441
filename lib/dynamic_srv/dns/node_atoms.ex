defmodule DynamicSrv.NodeAtoms do
  @moduledoc false
  # Turns SRV targets into node atoms, boundedly, by the rule of
  # `DynamicSrv.Naming`.
  #
  # A target `<label>.<service-domain>` names the node
  # `:"<label>@<service-domain>"` with the label in lowercase and the domain
  # as configured: DNS names are case-insensitive, so
  # `Node-1.<domain>` and `node-1.<domain>` are one node. Node names are
  # case-sensitive, so nodes must be started with lowercase names to be
  # reached. Any other target is ignored with a reason.
  #
  # Atoms are created only for names that passed validation, and at most
  # `max_nodes` per call, so a hostile or broken DNS answer cannot fill the
  # atom table. When an answer names more than `max_nodes` nodes, the choice
  # does not depend on the answer's order (servers rotate their answers): the
  # names that already exist as atoms come first, then the others in sorted
  # order. A rotating answer therefore gives the same names on every call, and
  # new atoms are made only while fewer than `max_nodes` of the answer's names
  # exist as atoms: over the life of the node, the atoms taken from DNS grow
  # only as the listed names themselves change.

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

    with {:ok, parsed} <- DynamicSrv.Naming.node_names(targets, service) do
      {pairs, ignored} = collect(Enum.zip(targets, parsed), max_nodes)
      {:ok, pairs, ignored}
    end
  end

  @doc """
  The node atoms for `names` (distinct node names that passed
  `DynamicSrv.Naming`'s rule), in their order, and the names left over
  `max_nodes`.
  """
  @spec to_atoms([String.t()], pos_integer()) :: {[node()], [String.t()]}
  def to_atoms(names, max_nodes) do
    chosen = choose(names, max_nodes)
    {kept, over} = Enum.split_with(names, &MapSet.member?(chosen, &1))
    # Only validated names, at most max_nodes of them, become atoms.
    {Enum.map(kept, &String.to_atom/1), over}
  end

  defp collect(parsed, max_nodes) do
    chosen = choose(for({_, {:ok, name}} <- parsed, do: name), max_nodes)

    {names, ignored, _seen} =
      Enum.reduce(parsed, {[], [], MapSet.new()}, fn
        {target, {:ok, name}}, {names, ignored, seen} ->
          cond do
            MapSet.member?(seen, name) ->
              {names, ignored, seen}

            not MapSet.member?(chosen, name) ->
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

  # The names taken from an answer, whatever its order: all of them when
  # they fit, else existing atoms first, then new names, each in sorted
  # order.
  defp choose(names, max_nodes) do
    unique = Enum.uniq(names)

    if length(unique) <= max_nodes do
      MapSet.new(unique)
    else
      {existing, new} = unique |> Enum.sort() |> Enum.split_with(&atom_exists?/1)
      (existing ++ new) |> Enum.take(max_nodes) |> MapSet.new()
    end
  end

  defp atom_exists?(name) do
    _ = String.to_existing_atom(name)
    true
  rescue
    ArgumentError -> false
  end
end
