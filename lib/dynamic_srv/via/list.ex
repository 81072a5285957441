defmodule DynamicSrv.Via.List do
  @moduledoc """
  A provider with a fixed list of nodes, for development (several `iex`
  shells on one machine) or a static set of hosts.

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.List,
        node_list: [:"app1@127.0.0.1", :"app2@127.0.0.1"]

  | key | meaning | default |
  | --- | --- | --- |
  | `node_list` | node names, as atoms or `"name@host"` strings | required |
  """
  @behaviour DynamicSrv.Provider

  @impl true
  def schema, do: [node_list: {:nodes, :required}]

  @impl true
  def poll, do: {:ok, DynamicSrv.Provider.get(:node_list, [])}
end
