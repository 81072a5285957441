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
  # NIF). Callers go through DynamicSrv.Resolver, DynamicSrv.Naming and
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

  # The NIFs, each replaced by its Rust function once the library is loaded:
  #
  #   lookup(type, name, settings)   {:ok, tag}; later {:dynamic_srv_dns, tag, result}
  #   probe(type, name, settings)    the same, for DynamicSrv.Check's transport facts
  #   node_names(targets, service)   {:ok, [{:ok, node_name} | {:error, reason}]}
  #   check_node_name(name)          {:ok, name}
  #   check_label(label, max)        {:ok, label}
  #   helper_of(name)                the node a rem-/rpc- helper works for, or nil
  #   parse_nameservers(text)        {:ok, [{ip, port}]} from DYNAMIC_SRV_NAMESERVERS
  #   check_nameservers(list)        {:ok, list} when it follows the nameserver rule
  #   limits()                       the bounds the Rust core enforces (a map)
  #
  # Errors have one shape, {:error, reason}: reason is an atom (:nxdomain,
  # :no_data, :timeout, :servfail, :refused) or {atom, message}
  # ({:invalid_name, _}, {:bad_settings, _}, {:other, _}).
  # Not named @nifs: Elixir 1.20 reads that attribute as the list of NIFs
  # and checks it against functions defined before it.
  @stubs [
    lookup: 3,
    probe: 3,
    node_names: 2,
    check_node_name: 1,
    check_label: 2,
    helper_of: 1,
    parse_nameservers: 1,
    check_nameservers: 1,
    limits: 0
  ]

  for {fun, arity} <- @stubs do
    args = Macro.generate_arguments(arity, __MODULE__)

    @doc false
    def unquote(fun)(unquote_splicing(args)) do
      load!()
      __MODULE__.unquote(fun)(unquote_splicing(args))
    end
  end

  defp load! do
    case load() do
      :ok -> :ok
      {:error, reason} -> :erlang.nif_error({:nif_not_loaded, reason})
    end
  end
end
