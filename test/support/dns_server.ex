defmodule DynamicSrv.Test.DnsServer do
  @moduledoc """
  A real dnsmasq for tests, demos and benchmarks, on a free loopback port,
  serving records from a generated config file (TTL 0). Records change by
  restarting it on the same port.

  Records are `{:srv, name, target, port}` (priority 0, weight 1),
  `{:srv, name, target, port, priority, weight}`, `{:a, name, ip}` and
  `{:aaaa, name, ip}`. Names under `consul` and `test` (and the domains of
  the `:local` option) are answered authoritatively (NXDOMAIN / no data for
  anything else there); other names are refused.
  """

  defstruct [:dir, :port, :os_pid, :records, :log_queries, listen: {127, 0, 0, 1}, local: []]

  @type entry ::
          {:srv, String.t(), String.t(), :inet.port_number()}
          | {:srv, String.t(), String.t(), :inet.port_number(), non_neg_integer(),
             non_neg_integer()}
          | {:a | :aaaa, String.t(), :inet.ip_address()}

  @spec start([entry()], keyword()) :: %__MODULE__{}
  def start(records, opts \\ []) do
    dir = Path.join(System.tmp_dir!(), "dynamic_srv_dns_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    port = Keyword.get_lazy(opts, :port, &free_port/0)

    server = %__MODULE__{
      dir: dir,
      port: port,
      records: records,
      log_queries: Keyword.get(opts, :log_queries, false),
      listen: Keyword.get(opts, :listen, {127, 0, 0, 1}),
      local: Keyword.get(opts, :local, [])
    }

    launch(server)
  end

  @doc "The `nameservers` option pointing at this server."
  def nameservers(%__MODULE__{port: port, listen: ip}), do: [{ip, port}]

  @doc "The environment of a node that asks this server, with a 1 s lookup timeout."
  def node_env(%__MODULE__{} = server),
    do: [{"DYNAMIC_SRV_NAMESERVERS", env_value(server)}, {"DYNAMIC_SRV_TIMEOUT_MS", "1000"}]

  @doc "The `DYNAMIC_SRV_NAMESERVERS` value pointing at this server."
  def env_value(%__MODULE__{port: port, listen: ip}), do: "#{:inet.ntoa(ip)}:#{port}"

  @doc "Serves `records` instead (a restart on the same port)."
  def set_records(%__MODULE__{} = server, records) do
    server |> stop_process() |> Map.put(:records, records) |> launch()
  end

  @doc "Stops the server process but keeps its port for `resume/1`."
  def pause(%__MODULE__{} = server), do: stop_process(server)

  def resume(%__MODULE__{} = server), do: launch(server)

  def stop(%__MODULE__{} = server) do
    stop_process(server)
    File.rm_rf(server.dir)
    :ok
  end

  @doc "How many queries the server has logged (needs `log_queries: true`)."
  def query_count(%__MODULE__{dir: dir}) do
    case File.read(Path.join(dir, "queries.log")) do
      {:ok, log} -> log |> String.split("\n") |> Enum.count(&String.contains?(&1, "query["))
      {:error, _} -> 0
    end
  end

  defp launch(server) do
    conf = Path.join(server.dir, "dnsmasq.conf")
    pid_file = Path.join(server.dir, "dnsmasq.pid")
    File.rm(pid_file)
    File.write!(conf, config(server))

    {_, 0} =
      System.cmd(dnsmasq(), ["--conf-file=#{conf}", "--pid-file=#{pid_file}"],
        stderr_to_stdout: true
      )

    os_pid = wait_for_pid(pid_file, 100)
    wait_until_serving(server.listen, server.port, 100)
    %{server | os_pid: os_pid}
  end

  defp config(server) do
    base = [
      "port=#{server.port}",
      "listen-address=#{:inet.ntoa(server.listen)}",
      "bind-interfaces",
      "no-resolv",
      "no-hosts",
      "no-negcache",
      "local=/consul/",
      "local=/test/",
      for(domain <- server.local, do: "local=/#{domain}/"),
      "local-ttl=0",
      "dns-forward-max=1000"
    ]

    logging =
      if server.log_queries,
        do: ["log-queries", "log-facility=#{Path.join(server.dir, "queries.log")}"],
        else: []

    Enum.join(List.flatten(base) ++ logging ++ Enum.map(server.records, &line/1), "\n") <> "\n"
  end

  defp line({:srv, name, target, port}), do: line({:srv, name, target, port, 0, 1})

  defp line({:srv, name, target, port, prio, weight}),
    do: "srv-host=#{name},#{target},#{port},#{prio},#{weight}"

  defp line({family, name, ip}) when family in [:a, :aaaa],
    do: "host-record=#{name},#{:inet.ntoa(ip)}"

  # The pid file names the running process even when the caller holds an
  # older copy of the struct.
  defp stop_process(%__MODULE__{dir: dir} = server) do
    case File.read(Path.join(dir, "dnsmasq.pid")) do
      {:ok, text} ->
        os_pid = String.trim(text)
        System.cmd("kill", ["-TERM", os_pid], stderr_to_stdout: true)
        wait_for_exit(os_pid, 100)
        File.rm(Path.join(dir, "dnsmasq.pid"))

      {:error, _} ->
        :ok
    end

    %{server | os_pid: nil}
  end

  defp dnsmasq do
    System.find_executable("dnsmasq") || Enum.find(["/usr/sbin/dnsmasq"], &File.exists?/1) ||
      raise "dnsmasq is not installed: apt-get install dnsmasq-base"
  end

  @doc """
  A port free for both UDP and TCP on loopback, for a server or a node to
  bind later. Ports are handed out in turn from below the kernel's
  ephemeral range, so that no port is handed out twice in a test run and
  none is taken, before it is bound, by the local end of an outgoing
  connection, as a port the kernel chose for `listen(0)` can be (a node
  whose port is taken stops at boot: `register/listen error: eaddrinuse`).
  """
  def free_port do
    {low, span} = port_range()
    # Monotonic, so no two calls in this VM get the same candidate (until
    # the range wraps); the start depends on the OS pid, so that two test
    # VMs on one machine start apart.
    turn = System.unique_integer([:positive, :monotonic])
    port = low + rem(:erlang.phash2(System.pid(), span) + turn, span)
    if bindable?(port), do: port, else: free_port()
  end

  # The 10,000 ports below the ephemeral range, or (where it cannot be
  # read or leaves no room) the 10,000 below 32768.
  defp port_range do
    with {:ok, text} <- File.read("/proc/sys/net/ipv4/ip_local_port_range"),
         [low | _] <- String.split(text),
         {low, ""} when low > 11_024 <- Integer.parse(low) do
      {low - 10_000, 10_000}
    else
      _ -> {22_768, 10_000}
    end
  end

  defp bindable?(port) do
    case :gen_tcp.listen(port, ip: {127, 0, 0, 1}) do
      {:ok, tcp} ->
        udp = :gen_udp.open(port, ip: {127, 0, 0, 1})
        with {:ok, socket} <- udp, do: :gen_udp.close(socket)
        :gen_tcp.close(tcp)
        match?({:ok, _}, udp)

      {:error, _} ->
        false
    end
  end

  defp wait_for_pid(_file, 0), do: raise("dnsmasq did not write its pid file")

  defp wait_for_pid(file, tries) do
    case File.read(file) do
      {:ok, text} when text != "" ->
        String.trim(text)

      _ ->
        Process.sleep(20)
        wait_for_pid(file, tries - 1)
    end
  end

  defp wait_until_serving(_ip, _port, 0), do: raise("dnsmasq is not answering")

  defp wait_until_serving(ip, port, tries) do
    case :gen_tcp.connect(ip, port, [], 200) do
      {:ok, socket} ->
        :gen_tcp.close(socket)

      {:error, _} ->
        Process.sleep(20)
        wait_until_serving(ip, port, tries - 1)
    end
  end

  defp wait_for_exit(_os_pid, 0), do: :ok

  defp wait_for_exit(os_pid, tries) do
    if File.exists?("/proc/#{os_pid}") do
      Process.sleep(20)
      wait_for_exit(os_pid, tries - 1)
    else
      :ok
    end
  end
end
