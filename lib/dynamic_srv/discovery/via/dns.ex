defmodule DynamicSrv.Via.Dns do
  @schema [
            dns_name:
              {:string, "localhost", "the name to look up", ~s[`"localhost"` (Peerage's default)]},
            app_name:
              {{:label, 200}, "nonode", "the name part of every node",
               ~s[`"nonode"` (Peerage's default)]},
            families:
              {{:in, [:auto, [:inet], [:inet6], [:inet, :inet6], [:inet6, :inet]]}, :auto,
               "`:auto`, `[:inet]` (A), `[:inet6]` (AAAA) or both (see below)"}
          ] ++
            DynamicSrv.Resolver.schema() ++
            [
              max_nodes:
                {:pos_integer, DynamicSrv.Defaults.max_nodes(),
                 "the most node names, hence atoms, taken from one answer"}
            ]

  @moduledoc """
  A provider that turns the A and AAAA records of one name into nodes
  `<app_name>@<ip>`, e.g. the pods behind a Kubernetes headless Service.
  Nodes must be started with `--name <app_name>@<their ip>`; IPv6
  addresses are written as the distribution expects (`app@fd00::1`).

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Dns,
        dns_name: "my-app.default.svc.cluster.local",
        app_name: "my_app"

  #{DynamicSrv.Config.table(@schema)}

  ## Address families

  The distribution listens on one address family: IPv4, unless the node
  runs with `-proto_dist inet6_tcp` (or `inet6_tls`). A node name in the
  other family can never be dialled, so `:auto` asks only the records of
  this node's family (`dist_family/0`): A records, as Peerage does, unless
  the distribution is IPv6, then AAAA. Peerage's example (`dns_name:
  "localhost"`, `app_name: "myapp"`) thus yields only `myapp@127.0.0.1`
  (this node, never dialled) rather than also `myapp@::1`, which failed to
  connect at every poll. Give both families only for a cluster whose nodes
  are named in both (a node can still dial only its own family).

  A name without addresses of a family counts as an empty answer for it.
  NXDOMAIN and any failure are errors, so the last membership stands: a
  headless Service's name vanishes for a moment when its last pod restarts.
  """
  @behaviour DynamicSrv.Provider

  alias DynamicSrv.Resolver

  @impl true
  def schema, do: @schema

  @impl true
  def poll(config) do
    opts = Resolver.options(config)

    config.families
    |> families()
    |> Enum.map(&Resolver.request(config.dns_name, Resolver.address_type(&1), opts))
    |> Enum.map(&finish/1)
    |> combine()
    |> case do
      {:ok, ips} ->
        {:ok,
         ips
         |> Enum.uniq()
         |> Enum.take(config.max_nodes)
         |> Enum.map(&:"#{config.app_name}@#{:inet.ntoa(&1)}")}

      error ->
        error
    end
  end

  @doc """
  The address family of this node's distribution: `:inet6` when
  `-proto_dist` names an IPv6 carrier (`inet6_tcp`, `inet6_tls`), else
  `:inet`.
  """
  @spec dist_family() :: :inet | :inet6
  def dist_family do
    case :init.get_argument(:proto_dist) do
      {:ok, protos} ->
        ipv6? =
          for(args <- protos, arg <- args, do: to_string(arg)) |> Enum.any?(&(&1 =~ ~r/^inet6_/))

        if ipv6?, do: :inet6, else: :inet

      :error ->
        :inet
    end
  end

  defp families(:auto), do: [dist_family()]
  defp families(families), do: families

  defp finish({:ok, request}) do
    case Resolver.await(request) do
      {:ok, records} -> {:ok, Enum.map(records, & &1.address)}
      {:error, :no_data} -> {:ok, []}
      error -> error
    end
  end

  defp finish(error), do: error

  defp combine(answers) do
    Enum.reduce_while(answers, {:ok, []}, fn
      {:ok, ips}, {:ok, acc} -> {:cont, {:ok, acc ++ ips}}
      error, _ -> {:halt, error}
    end)
  end
end
