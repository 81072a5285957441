defmodule DynamicSrv.EnvTest do
  use ExUnit.Case, async: true

  alias DynamicSrv.Env

  test "ERL_DIST_PORT" do
    assert Env.dist_port("4370") == {:ok, 4370}
    assert Env.dist_port(" 65535 ") == {:ok, 65535}
    assert Env.dist_port(nil) == {:error, :unset}

    for bad <- ["", "abc", "0", "65536", "-1", "12.5", "4370x"] do
      assert {:error, message} = Env.dist_port(bad)
      assert message =~ "ERL_DIST_PORT=#{inspect(bad)}"
      assert message =~ "1..65535"
    end
  end

  test "DYNAMIC_SRV_NAMESERVERS and DYNAMIC_SRV_TIMEOUT_MS" do
    assert {:ok, %{nameservers: :system, timeout: 3_000}} = Env.read_resolver_defaults(nil, nil)

    assert {:ok,
            %{nameservers: [{{127, 0, 0, 1}, 8600}, {{0, 0, 0, 0, 0, 0, 0, 1}, 53}], timeout: 250}} =
             Env.read_resolver_defaults("127.0.0.1:8600, [::1]:53", "250")

    assert {:error, message} = Env.read_resolver_defaults("127.0.0.1:99999", nil)
    assert message =~ ~s(DYNAMIC_SRV_NAMESERVERS="127.0.0.1:99999")
    assert {:error, message} = Env.read_resolver_defaults("consul", nil)
    assert message =~ "DYNAMIC_SRV_NAMESERVERS"

    for bad <- ["0", "soon", "600001", "1.5"] do
      assert {:error, message} = Env.read_resolver_defaults(nil, bad)
      assert message =~ "DYNAMIC_SRV_TIMEOUT_MS=#{inspect(bad)}"
    end
  end
end
