defmodule DynamicSrv.Test.Named do
  @moduledoc """
  A real BIND `named` on a free loopback port, authoritative for one zone,
  for answers too large for dnsmasq (which emits malformed TCP answers past
  about 16 KiB). Records as in `DynamicSrv.Test.DnsServer`.

  BIND 9.18.28 and later refuse to load more than 100 records of one type at
  one name unless `max-records-per-type` is raised; the generated config
  lifts the limit (0 = none), so large SRV answers can be served.

  named runs under a small `sh` guard that stops it when its standard input
  closes, so a VM that dies without calling `stop/1` leaves no server behind
  (named itself never reads its input).
  """

  defstruct [:dir, :port, :port_ref, :os_pid]

  # $1: the named executable, $2: its config. TERM (from stop/1) stops named
  # and waits for it; the end of standard input (the owning VM is gone) stops
  # it too. The reader must not hold the port's output pipe, or the port
  # would report no exit status while it lives.
  @guard ~S"""
  exec 3<&0
  "$1" -g -n 1 -c "$2" 3<&- </dev/null &
  pid=$!
  { cat <&3; kill -TERM "$pid"; } >/dev/null 2>&1 &
  reader=$!
  exec 3<&-
  trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; kill "$reader" 2>/dev/null; exit 0' TERM
  wait "$pid"
  status=$?
  kill "$reader" 2>/dev/null
  exit "$status"
  """

  def start(zone, records) do
    dir = Path.join(System.tmp_dir!(), "dynamic_srv_named_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    port = DynamicSrv.Test.DnsServer.free_port()
    File.write!(Path.join(dir, "zone.db"), zone_file(zone, records))
    File.write!(Path.join(dir, "named.conf"), conf(dir, port, zone))

    named = System.find_executable("named") || "/usr/sbin/named"

    ref =
      Port.open({:spawn_executable, System.find_executable("sh") || "/bin/sh"}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-c", @guard, "named-guard", named, Path.join(dir, "named.conf")]
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
      max-records-per-type 0;
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

  # named logs to stdout (-g); a zone that fails to load or a process that
  # exits ends the wait at once, with named's output in the error.
  defp wait_serving(server, zone, tries, output \\ "")

  defp wait_serving(server, _zone, 0, output),
    do: failed(server, "named is not answering", output)

  defp wait_serving(server, zone, tries, output) do
    {output, status} = drain(server.port_ref, output)

    cond do
      status != nil ->
        File.rm_rf(server.dir)
        failed(nil, "named exited with status #{status}", output)

      output =~ "not loaded due to errors" ->
        failed(server, "named could not load zone #{zone}", output)

      match?(
        {:ok, _},
        :inet_res.resolve(~c"ns.#{zone}", :in, :a, nameservers: nameservers(server), timeout: 200)
      ) ->
        server

      true ->
        Process.sleep(50)
        wait_serving(server, zone, tries - 1, output)
    end
  end

  defp failed(server, message, output) do
    if server, do: stop(server)
    raise "#{message}:\n" <> (output |> String.split("\n") |> Enum.take(-15) |> Enum.join("\n"))
  end

  # Reads what named wrote so far; a {:exit_status, n} message is consumed
  # and returned.
  defp drain(ref, acc) do
    receive do
      {^ref, {:data, data}} -> drain(ref, acc <> data)
      {^ref, {:exit_status, status}} -> {acc, status}
    after
      0 -> {acc, nil}
    end
  end
end
