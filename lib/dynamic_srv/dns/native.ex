defmodule DynamicSrv.Native do
  @moduledoc false
  # The Rust NIF (native/dynamic_srv_nif). The library is loaded on first
  # use, not by @on_load: in a release's embedded mode the kernel runs
  # @on_load functions only after it has started the distribution, and with
  # it DynamicSrv.Epmd, which needs the NIF at once. Loading needs neither
  # the file server nor Logger, so it also works while the kernel boots.
  #
  # Each public function below is replaced by its NIF once the library is
  # loaded; until then it loads the library and calls itself again (now the
  # NIF). Callers go through DynamicSrv.Resolver, DynamicSrv.Target and
  # DynamicSrv.Env, never through this module directly.

  @nif_name ~c"libdynamic_srv_nif"

  @doc false
  @spec load() :: :ok | {:error, term()}
  def load do
    case :code.priv_dir(:libcluster_dynamic_srv) do
      {:error, reason} ->
        {:error, {:priv_dir, reason}}

      dir ->
        case :erlang.load_nif(:filename.join([dir, ~c"native", @nif_name]), 0) do
          :ok -> :ok
          # Another process loaded it first.
          {:error, {:reload, _}} -> :ok
          {:error, _} = error -> error
        end
    end
  end

  @doc false
  @spec loaded?() :: boolean()
  def loaded?, do: load() == :ok

  # Starts a lookup and returns {:ok, tag} at once; the caller later
  # receives {:dynamic_srv_dns, tag, result}.
  def lookup(type, name, settings) do
    load!()
    __MODULE__.lookup(type, name, settings)
  end

  # Starts a probe of the transport for DynamicSrv.Check; replies as lookup/3.
  def probe(type, name, settings) do
    load!()
    __MODULE__.probe(type, name, settings)
  end

  # :ok, or {:error, message} when a list of {ip, port} breaks the rule every
  # nameserver list follows.
  def check_nameservers(list) do
    load!()
    __MODULE__.check_nameservers(list)
  end

  def parse_targets(targets, service) do
    load!()
    __MODULE__.parse_targets(targets, service)
  end

  def parse_nameservers(text) do
    load!()
    __MODULE__.parse_nameservers(text)
  end

  defp load! do
    case load() do
      :ok -> :ok
      {:error, reason} -> :erlang.nif_error({:nif_not_loaded, reason})
    end
  end
end
