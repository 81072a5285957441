defmodule DynamicSrv.NamingTest do
  @moduledoc """
  The one naming rule, asked through the NIF, and its users agreeing on it:
  a name the strategy makes from a target is one config validation and the
  UDP provider accept, and a name they refuse, none of them takes.
  """
  use ExUnit.Case, async: true

  alias DynamicSrv.{Config, Naming, NodeAtoms}
  alias DynamicSrv.Via.Udp.Packet

  @service "app.service.consul"

  test "targets name nodes under their service, the label in lowercase" do
    assert {:ok,
            [{:ok, "node-1@app.service.consul"}, {:error, why}, {:ok, "b_2@app.service.consul"}]} =
             Naming.node_names(
               ["Node-1.app.service.consul.", "x.other.consul", "B_2.APP.service.consul"],
               @service
             )

    assert why =~ "not <label>.app.service.consul"
    assert {:error, message} = Naming.node_names(["a.b"], "bad service")
    assert message =~ "service"

    assert {:ok, [{:ok, "n@app.service.consul"}, {:error, _}]} =
             Naming.node_names(["n.app.service.consul", "n.elsewhere"], @service)
  end

  test "answers larger than one NIF call are parsed in chunks, in order" do
    count = DynamicSrv.Native.limits().max_targets_per_call * 2 + 7
    targets = for i <- 1..count, do: "n#{i}.#{@service}"
    assert {:ok, parsed} = Naming.node_names(targets, @service)
    assert parsed == for(i <- 1..count, do: {:ok, "n#{i}@#{@service}"})
  end

  test "node names: OTP's rule for the name, a DNS name or an address for the host" do
    for good <- [
          :app@host,
          "node-1@app.service.consul",
          "a_b@10.0.0.5",
          "app@::1",
          "rem-1a-app@h"
        ],
        do: assert(Naming.check_node_name(good) == :ok, inspect(good))

    for bad <- [
          "app",
          "@host",
          "app@",
          "a@b@c",
          "my.app@host",
          "app@ho st",
          "app@hé",
          42,
          "a" <> <<0>> <> "@h"
        ] do
      assert {:error, message} = Naming.check_node_name(bad), inspect(bad)
      assert is_binary(message)
    end

    assert Naming.check_node_name("a@" <> String.duplicate("b", 253)) == :ok
    assert {:error, _} = Naming.check_node_name("a@" <> String.duplicate("b", 254))
  end

  test "release helpers name the node they work for" do
    assert Naming.helper_of("rem-1a2b-app") == "app"
    assert Naming.helper_of("rpc-ff-my-app") == "my-app"

    for other <- ["app", "rem-", "rem-1a2b", "rem--app", "remx-1-app"],
        do: refute(Naming.helper?(other))
  end

  test "the strategy, config validation and the UDP provider agree" do
    {:ok, pairs, _ignored} =
      NodeAtoms.to_nodes(["Node-7.#{@service}", "weird.name.#{@service}"], @service, 10)

    assert [{_, node}] = pairs
    schema = [nodes: {:nodes, :required}]
    assert {:ok, %{nodes: [^node]}} = Config.validate([nodes: [node]], schema, "t")

    packet = Packet.encode(Atom.to_string(node), 1, 4000, nil)
    assert {:ok, %{name: "node-7@app.service.consul"}} = Packet.decode(packet, nil)

    # A name OTP cannot start a node with is refused by all of them.
    assert {:error, _} = Config.validate([nodes: ["my.app@host"]], schema, "t")
    assert {:error, :bad_name} = Packet.decode(Packet.encode("my.app@host", 1, 4000, nil), nil)
    assert {:ok, [{:error, _}]} = Naming.node_names(["my.app.#{@service}"], @service)
  end

  test "labels" do
    assert Naming.check_label("my_app-1", 200) == :ok
    assert {:error, _} = Naming.check_label("my.app", 200)
    assert {:error, _} = Naming.check_label(String.duplicate("a", 201), 200)
    assert {:error, _} = Naming.check_label(:atom, 200)
  end
end
