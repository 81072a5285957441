defmodule DynamicSrv.DeferredConfigTest do
  use ExUnit.Case, async: false

  alias DynamicSrv.DeferredConfig

  setup do
    on_exit(fn ->
      for var <- ~w(DSRV_T_NAME DSRV_T_PORT DSRV_T_LIST DSRV_T_MISSING),
          do: System.delete_env(var)
    end)
  end

  def triple(x), do: 3 * x

  test "every form resolves, also inside nested lists, keywords, tuples and maps" do
    System.put_env("DSRV_T_NAME", "my-app.service.consul")
    System.put_env("DSRV_T_PORT", "8600")
    System.put_env("DSRV_T_LIST", "a@h,b@h")

    config = [
      service: {:system, "DSRV_T_NAME"},
      timeout: {:system, "DSRV_T_MISSING", 2_000},
      port: {:system, "DSRV_T_PORT", 53, &String.to_integer/1},
      port2: {:system, "DSRV_T_PORT", 53, {String, :to_integer}},
      node_list: {:system, "DSRV_T_LIST", [], &String.split(&1, ",")},
      interval: {:apply, {__MODULE__, :triple, [5]}},
      nested: [deep: [{:system, "DSRV_T_NAME"}, %{k: {:system, "DSRV_T_PORT"}}]],
      nameservers: [{{127, 0, 0, 1}, {:system, "DSRV_T_PORT", 53, &String.to_integer/1}}],
      plain: :untouched
    ]

    assert {:ok, resolved} = DeferredConfig.resolve(config)

    assert resolved == [
             service: "my-app.service.consul",
             timeout: 2_000,
             port: 8600,
             port2: 8600,
             node_list: ["a@h", "b@h"],
             interval: 15,
             nested: [deep: ["my-app.service.consul", %{k: "8600"}]],
             nameservers: [{{127, 0, 0, 1}, 8600}],
             plain: :untouched
           ]
  end

  test "a missing required variable gives one message naming the key and the variable" do
    assert {:error, message} =
             DeferredConfig.resolve(nested: [service: {:system, "DSRV_T_MISSING"}])

    assert message =~ "nested.service"
    assert message =~ "DSRV_T_MISSING is not set"
  end

  test "a value the conversion rejects is named with its variable" do
    System.put_env("DSRV_T_PORT", "eighty")

    assert {:error, message} =
             DeferredConfig.resolve(port: {:system, "DSRV_T_PORT", 53, &String.to_integer/1})

    assert message =~ ~s(port: DSRV_T_PORT="eighty" could not be converted)
  end

  test "an {:apply, mfa} that raises is reported, not raised" do
    assert {:error, message} = DeferredConfig.resolve(x: {:apply, {String, :to_integer, ["x"]}})
    assert message =~ "x: {:apply, {String, :to_integer"
  end

  test "DeferredConfig's {:system, VAR, {M, F}} converts; a tuple default stays a default" do
    System.put_env("DSRV_T_PORT", "8600")

    assert DeferredConfig.resolve(
             port: {:system, "DSRV_T_PORT", {String, :to_integer}},
             pair: {:system, "DSRV_T_MISSING", {:ok, :fallback}}
           ) == {:ok, [port: 8600, pair: {:ok, :fallback}]}

    assert {:error, message} =
             DeferredConfig.resolve(port: {:system, "DSRV_T_MISSING", {String, :to_integer}})

    assert message =~ "DSRV_T_MISSING is not set"
  end
end
