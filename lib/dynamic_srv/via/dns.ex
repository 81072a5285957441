defmodule DynamicSrv.Via.Dns do
  @moduledoc """
  A provider that turns the A and AAAA records of one name into nodes
  `<app_name>@<ip>`, e.g. the pods behind a Kubernetes headless Service.
  Nodes must be started with `--name <app_name>@<their ip>`; IPv6
  addresses are written as the distribution expects (`app@fd00::1`).

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Dns,
        dns_name: "my-app.default.svc.cluster.local",
        app_name: "my_app"

  | key | meaning | default |
  | --- | --- | --- |
  | `dns_name` | the name to look up | required |
  | `app_name` | the name part of every node | required |
  | `families` | `[:inet]`, `[:inet6]` or both | `[:inet, :inet6]` |
  | `nameservers` / `timeout` / `protocol` | options of `DynamicSrv.Resolver` | see there |
  | `max_nodes` | the most node names (hence atoms) taken from one answer | `1024` |

  A name without addresses of a family counts as an empty answer for it.
  NXDOMAIN and any failure are errors, so the last membership stands: a
  headless Service's name vanishes for a moment when its last pod restarts.
  """
  @behaviour DynamicSrv.Provider

  alias DynamicSrv.{Provider, Resolver}

  @impl true
  def schema do
    [
      dns_name: {:string, :required},
      app_name: {{:label, 200}, :required},
      families: {{:in, [[:inet], [:inet6], [:inet, :inet6], [:inet6, :inet]]}, [:inet, :inet6]},
      nameservers: {:nameservers, nil},
      timeout: {:pos_integer, nil},
      protocol: {{:in, [:udp, :tcp]}, :udp},
      max_nodes: {:pos_integer, 1024}
    ]
  end

  @impl true
  def poll do
    config = Map.new(Provider.config())
    opts = Resolver.options(config)

    config.families
    |> Enum.map(&Resolver.request(config.dns_name, type(&1), opts))
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

  defp type(:inet), do: :a
  defp type(:inet6), do: :aaaa

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
