defmodule DynamicSrv.Test.RunnerSupport do
  @moduledoc """
  `DynamicSrv.Runner` in the test VM: starting it unlinked, stopping it as
  its supervisor would, and undoing what it wrote to the application
  environment. Tests pass the returned functions to `on_exit/1`.
  """

  @app :libcluster_dynamic_srv

  @doc """
  A function that deletes the application environment keys added since
  this call (the runner writes its resolved configuration there).
  """
  def env_restorer do
    before = Application.get_all_env(@app)

    fn ->
      for {key, _} <- Application.get_all_env(@app),
          not Keyword.has_key?(before, key),
          do: Application.delete_env(@app, key)
    end
  end

  @doc "Starts the runner unlinked from the caller; `{:ok, pid}` or what `start_link/1` returned."
  def start(config) do
    case DynamicSrv.Runner.start_link(config) do
      {:ok, pid} ->
        Process.unlink(pid)
        {:ok, pid}

      other ->
        other
    end
  end

  @doc """
  Stops the runner as its supervisor would: its provider process is shut
  down and its name is free when this returns.
  """
  def stop(pid) do
    GenServer.stop(pid)
  catch
    :exit, _ -> :ok
  end

  @doc "How many starts of the runner's provider process have failed in a row."
  def provider_failures(runner), do: :sys.get_state(runner).provider.failures
end
