defmodule DynamicSrv.Test.Named do
  @moduledoc """
  A real BIND `named` on a free loopback port, authoritative for one zone,
  for answers too large for dnsmasq (which emits malformed TCP answers past
  about 16 KiB). Records as in `DynamicSrv.Test.DnsServer`.
  """

  defstruct [:dir, :port, :port_ref, :os_pid]

  def start(zone, records) do
    dir = Path.join(System.tmp_dir!(), "dynamic_srv_named_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    port = DynamicSrv.Test.DnsServer.free_port()
    File.write!(Path.join(dir, "zone.db"), zone_file(zone, records))
    File.write!(Path.join(dir, "named.conf"), conf(dir, port, zone))

    named = System.find_executable("named") || "/usr/sbin/named"

    ref =
      Port.open({:spawn_executable, named}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-g", "-n", "1", "-c", Path.join(dir, "named.conf")]
      ])

    {:os_pid, os_pid} = Port.info(ref, :os_pid)
    server = %__MODULE__{dir: dir, port: port, port_ref: ref, os_pid: os_pid}
    wait_serving(server, zone, 200)
  end

  def nameservers(%__MODULE__{port: port}), do: [{{127, 0, 0, 1}, port}]

  def stop(%__MODULE__{port_ref: ref, os_pid: os_pid, dir: dir}) do
    System.cmd("kill", ["-TERM", to_string(os_pid)], stderr_to_stdout: true)

    receive do
      {^ref, {:exit_status, _}} -> :ok
    after
      5_000 -> System.cmd("kill", ["-KILL", to_string(os_pid)], stderr_to_stdout: true)
    end

    File.rm_rf(dir)
    :ok
  end

  defp conf(dir, port, zone) do
    """
    options {
      directory "#{dir}";
      pid-file "#{dir}/named.pid";
      listen-on port #{port} { 127.0.0.1; };
      listen-on-v6 { none; };
      recursion no;
      dnssec-validation no;
      notify no;
    };
    controls { };
    zone "#{zone}" { type primary; file "#{dir}/zone.db"; };
    """
  end

  defp zone_file(zone, records) do
    header = """
    $TTL 0
    @ IN SOA ns.#{zone}. admin.#{zone}. 1 3600 600 86400 0
    @ IN NS ns.#{zone}.
    ns IN A 127.0.0.1
    """

    header <> Enum.map_join(records, "\n", &line/1) <> "\n"
  end

  defp line({:srv, name, target, port}), do: line({:srv, name, target, port, 0, 1})

  defp line({:srv, name, target, port, prio, weight}),
    do: "#{name}. IN SRV #{prio} #{weight} #{port} #{target}."

  defp line({:a, name, ip}), do: "#{name}. IN A #{:inet.ntoa(ip)}"
  defp line({:aaaa, name, ip}), do: "#{name}. IN AAAA #{:inet.ntoa(ip)}"

  defp wait_serving(server, _zone, 0),
    do: raise("named did not start: #{inspect(drain(server.port_ref))}")

  defp wait_serving(server, zone, tries) do
    case :inet_res.resolve(~c"ns.#{zone}", :in, :a, nameservers: nameservers(server), timeout: 200) do
      {:ok, _} ->
        server

      {:error, _} ->
        Process.sleep(50)
        wait_serving(server, zone, tries - 1)
    end
  end

  defp drain(ref) do
    receive do
      {^ref, {:data, data}} -> data <> drain(ref)
    after
      0 -> ""
    end
  end
end
