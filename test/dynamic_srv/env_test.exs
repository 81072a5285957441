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

    # One address, two readings: ::1 on port 53, or ::1:53 on the default port.
    assert {:error, message} = Env.read_resolver_defaults("::1:53", nil)
    assert message =~ ~s(DYNAMIC_SRV_NAMESERVERS="::1:53")
    assert message =~ "write [::1]:53 or [::1:53]"

    for {bad, says} <- [
          {"0.0.0.0", "0.0.0.0:53 is the unspecified address"},
          {"127.0.0.1:53,[::]:53", "[::]:53 is the unspecified address"},
          {"255.255.255.255", "255.255.255.255:53 is the broadcast address"},
          {"224.0.0.251:5353", "224.0.0.251:5353 is a multicast address"},
          {"[ff02::fb]:5353", "[ff02::fb]:5353 is a multicast address"}
        ] do
      assert {:error, message} = Env.read_resolver_defaults(bad, nil)
      assert message =~ "DYNAMIC_SRV_NAMESERVERS=#{inspect(bad)}"
      assert message =~ says
      assert message =~ "give the address of a DNS server"
    end

    for bad <- ["0", "soon", "600001", "1.5"] do
      assert {:error, message} = Env.read_resolver_defaults(nil, bad)
      assert message =~ "DYNAMIC_SRV_TIMEOUT_MS=#{inspect(bad)}"
    end
  end
end
