defmodule DynamicSrv.ExamplesTest do
  @moduledoc """
  The deployment examples that can be checked here: the Kubernetes YAML and
  the Consul JSON are parsed (Debian's python3 with PyYAML) and their key
  fields compared with what the README and the strategy expect.
  """
  use ExUnit.Case, async: true

  @python "/usr/bin/python3"
  @examples Path.expand("../examples", __DIR__)

  # Prints key=value lines for the fields the test checks.
  @extract """
  import json, sys, yaml
  kind, path = sys.argv[1], sys.argv[2]
  if kind == "k8s":
      docs = list(yaml.safe_load_all(open(path)))
      svc = next(d for d in docs if d["kind"] == "Service")
      sts = next(d for d in docs if d["kind"] == "StatefulSet")
      c = sts["spec"]["template"]["spec"]["containers"][0]
      env = {e["name"]: e.get("value") for e in c["env"]}
      print("cluster_ip=" + str(svc["spec"]["clusterIP"]))
      print("service_port_name=" + svc["spec"]["ports"][0]["name"])
      print("service_port=" + str(svc["spec"]["ports"][0]["port"]))
      print("not_ready=" + str(svc["spec"]["publishNotReadyAddresses"]))
      print("service_name=" + sts["spec"]["serviceName"])
      print("container_port=" + str(c["ports"][0]["containerPort"]))
      print("erl_dist_port=" + env["ERL_DIST_PORT"])
      print("release_node=" + env["RELEASE_NODE"])
  else:
      s = json.load(open(path))["service"]
      print("name=" + s["name"])
      print("port=" + str(s["port"]))
      print("tags=" + ",".join(s["tags"]))
      print("check_tcp=" + s["check"]["tcp"])
      print("connect=" + str("sidecar_service" in s["connect"]))
  """

  defp extract(kind, file) do
    {out, 0} = System.cmd(@python, ["-c", @extract, kind, Path.join(@examples, file)])

    for line <- String.split(out, "\n", trim: true), into: %{} do
      [key, value] = String.split(line, "=", parts: 2)
      {key, value}
    end
  end

  test "the Kubernetes StatefulSet and headless Service fit the strategy" do
    k8s = extract("k8s", "kubernetes/cluster.yaml")
    assert k8s["cluster_ip"] == "None"
    assert k8s["service_port_name"] == "dist"
    assert k8s["not_ready"] == "True"
    assert k8s["service_name"] == "my-app"
    assert k8s["container_port"] == k8s["service_port"]
    assert k8s["erl_dist_port"] == k8s["service_port"]
    assert k8s["release_node"] == "$(POD_NAME)@my-app.$(POD_NAMESPACE).svc.cluster.local"

    # The SRV target of pod my-app-0 gives the node name the pod runs as.
    target = "my-app-0.my-app.default.svc.cluster.local"

    assert {:ok, [{^target, :"my-app-0@my-app.default.svc.cluster.local"}], []} =
             DynamicSrv.NodeAtoms.to_nodes([target], "my-app.default.svc.cluster.local", 10)

    config = File.read!(Path.join(@examples, "kubernetes/config.exs"))
    assert config =~ ~s(query: "_dist._tcp.my-app.)
  end

  test "the Consul service definition tags the instance with its node label" do
    consul = extract("consul", "consul/my-app.json")
    assert consul["name"] == "my-app"
    assert consul["tags"] == "node-1"
    assert consul["check_tcp"] == "127.0.0.1:" <> consul["port"]
    assert consul["connect"] == "True"
  end
end
