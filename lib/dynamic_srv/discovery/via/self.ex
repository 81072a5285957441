defmodule DynamicSrv.Via.Self do
  @moduledoc """
  A provider that lists only the local node: a cluster of one, for a
  development shell or a single-instance deployment that keeps the
  discovery configuration in place.

      config :libcluster_dynamic_srv, via: DynamicSrv.Via.Self

  It has no keys of its own.
  """
  @behaviour DynamicSrv.Provider

  @impl true
  def poll(_config), do: {:ok, [node()]}
end
