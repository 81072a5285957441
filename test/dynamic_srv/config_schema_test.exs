defmodule DynamicSrv.ConfigSchemaTest do
  @moduledoc """
  Each group of keys has one schema: validation, defaults and the key
  tables of the modules' docs all come from it.
  """
  use ExUnit.Case, async: true

  alias DynamicSrv.Config

  # Every module whose configuration is validated, with its schema.
  @schemas [
    {DynamicSrv.Via.Srv, &DynamicSrv.Via.Srv.schema/0},
    {DynamicSrv.Via.Dns, &DynamicSrv.Via.Dns.schema/0},
    {DynamicSrv.Via.List, &DynamicSrv.Via.List.schema/0},
    {DynamicSrv.Via.Udp, &DynamicSrv.Via.Udp.schema/0}
  ]

  defp moduledoc(module) do
    {:docs_v1, _, _, _, %{"en" => doc}, _, _} = Code.fetch_docs(module)
    doc
  end

  test "each module's key table is its schema's, and every key says what it means" do
    for {module, schema} <- @schemas do
      schema = schema.()
      assert moduledoc(module) =~ Config.table(schema), inspect(module)

      for {key, entry} <- schema do
        assert tuple_size(entry) in [3, 4] and elem(entry, 2) != "",
               "#{inspect(module)}: #{inspect(key)} has no meaning"
      end
    end
  end

  test "the strategy's and the runner's tables list the keys they accept" do
    strategy = moduledoc(Cluster.Strategy.DynamicSrv)

    for key <-
          Keyword.keys(DynamicSrv.SrvPoll.schema()) ++
            [:polling_interval, :disconnect_on_deregister, :fence] do
      assert strategy =~ "| `#{key}` |"
    end

    runner = moduledoc(DynamicSrv.Runner)

    for key <- [:via, :interval, :log_results, :serves, :disconnect_removed, :fence] do
      assert runner =~ "| `#{key}` |"
    end
  end

  test "the resolver keys are one group, shared by the SRV and DNS schemas" do
    resolver = DynamicSrv.Resolver.schema()

    for schema <- [DynamicSrv.SrvPoll.schema(), DynamicSrv.Via.Dns.schema()] do
      assert Enum.filter(schema, fn {key, _} -> Keyword.has_key?(resolver, key) end) == resolver
    end
  end

  test "defaults and the table come from the same entries" do
    schema = [a: {:pos_integer, 5, "a number"}, b: {:string, :required, "a name"}, c: {:any, nil}]
    assert Config.defaults(schema) == %{a: 5, b: :required, c: nil}

    assert Config.table(schema) ==
             """
             | key | meaning | default |
             | --- | --- | --- |
             | `a` | a number | `5` |
             | `b` | a name | required |
             | `c` |  | none |\
             """

    assert {:ok, %{a: 5, b: "x", c: nil}} = Config.validate([b: "x"], schema, "t")

    assert {:error, "t: the :b key is required (a non-empty string)"} =
             Config.validate([], schema, "t")
  end
end
