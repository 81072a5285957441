defmodule DynamicSrv.Test.Netns do
  @moduledoc """
  Test hosts in network namespaces: each host is a namespace with one veth
  interface on a bridge in the root namespace, which plays the DNS host
  (dnsmasq listens on the bridge's address). Needs root; `setup/1` raises
  with the reason when namespaces cannot be created.
  """

  defstruct [:tag, :bridge, :gateway, :hosts]

  @doc "Creates `count` hosts on a fresh /24; returns the network."
  def setup(count) do
    tag = rem(System.unique_integer([:positive]), 200) + 20
    bridge = "dsrvbr#{tag}"
    net = %__MODULE__{tag: tag, bridge: bridge, gateway: {10, 77, tag, 254}, hosts: []}

    try do
      ip!(["link", "add", bridge, "type", "bridge"])
      ip!(["addr", "add", "10.77.#{tag}.254/24", "dev", bridge])
      ip!(["link", "set", bridge, "up"])

      hosts =
        for i <- 1..count do
          ns = "dsrv#{tag}h#{i}"
          outer = "dsrv#{tag}v#{i}"
          address = {10, 77, tag, i}
          ip!(["netns", "add", ns])
          ip!(["link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns])
          ip!(["link", "set", outer, "master", bridge])
          ip!(["link", "set", outer, "up"])
          ip!(["-n", ns, "addr", "add", "10.77.#{tag}.#{i}/24", "dev", "eth0"])
          ip!(["-n", ns, "link", "set", "eth0", "up"])
          ip!(["-n", ns, "link", "set", "lo", "up"])
          %{ns: ns, link: outer, address: address}
        end

      %{net | hosts: hosts}
    rescue
      e ->
        teardown(net)

        reraise RuntimeError,
                "network namespaces are not available (root and iproute2 are needed): " <>
                  Exception.message(e),
                __STACKTRACE__
    end
  end

  @doc "Takes the host's link down: it is cut off from every other host."
  def cut(%{link: link}), do: ip!(["link", "set", link, "down"])

  @doc "Brings the host's link back up."
  def restore(%{link: link}), do: ip!(["link", "set", link, "up"])

  @doc """
  Gives the host a resolv.conf of its own: `ip netns exec` (so a node
  started with `netns:`) bind-mounts `/etc/netns/<ns>/resolv.conf` over
  `/etc/resolv.conf`. `teardown/1` removes it.
  """
  def resolv_conf(%{ns: ns}, text) do
    dir = Path.join("/etc/netns", ns)
    File.mkdir_p!(dir)
    File.write!(Path.join(dir, "resolv.conf"), text)
  end

  @doc "Deletes the namespaces (and their veths), their /etc/netns files and the bridge."
  def teardown(%__MODULE__{tag: tag, bridge: bridge}) do
    for dir <- Path.wildcard("/etc/netns/dsrv#{tag}h*"), do: File.rm_rf(dir)
    {out, _} = System.cmd("ip", ["netns", "list"], stderr_to_stdout: true)

    for line <- String.split(out, "\n"),
        [ns | _] = String.split(line, " "),
        String.starts_with?(ns, "dsrv#{tag}h"),
        do: System.cmd("ip", ["netns", "del", ns], stderr_to_stdout: true)

    System.cmd("ip", ["link", "del", bridge], stderr_to_stdout: true)
    :ok
  end

  defp ip!(args) do
    case System.cmd("ip", args, stderr_to_stdout: true) do
      {_, 0} -> :ok
      {out, status} -> raise "ip #{Enum.join(args, " ")} failed (#{status}): #{String.trim(out)}"
    end
  end
end
