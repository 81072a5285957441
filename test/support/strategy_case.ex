defmodule DynamicSrv.Test.StrategyCase do
  @moduledoc """
  The case of the strategy's one-VM tests: a recorder standing in for
  `:net_kernel` (`%{recorder: rec}` in the context), a resolver function
  whose answer the test changes, and `start/2,3`, which runs the strategy
  until the test ends.
  """
  use ExUnit.CaseTemplate

  alias DynamicSrv.Test.{Recorder, State}

  using do
    quote do
      import ExUnit.CaptureLog
      import DynamicSrv.Test.StrategyCase

      alias Cluster.Strategy.DynamicSrv, as: Strategy
      alias DynamicSrv.Test.{Recorder, State}

      @svc DynamicSrv.Test.StrategyCase.service()
      @interval 100
      # A poll runs when the strategy starts: what follows it (the
      # resolver's call, the connects) comes at once on an idle machine,
      # and within a scheduler's share of a loaded one; ExUnit's 100 ms
      # default is too short for a machine whose cores other processes take.
      @first_poll 2_000
      # What a few polls bring (a departure needs two answers and a look at
      # the node's own name): 5 polls on an idle machine. A bound for the
      # wait, not a timing target: under make test-stress's hogs 500 ms
      # (5 intervals) was once too short.
      @few_polls 5_000
    end
  end

  setup do
    %{recorder: Recorder.start(self())}
  end

  @doc "The service every test's answers name."
  def service, do: "my-service.service.consul"

  @doc """
  A resolver function whose answer the test changes: `{fun, set}`. Each
  call is reported to the test as `{:resolved, query}`.
  """
  def resolver(answer) do
    {:ok, agent} = Agent.start_link(fn -> answer end)
    test = self()

    fun = fn query ->
      send(test, {:resolved, query})
      Agent.get(agent, & &1)
    end

    {fun, fn new -> Agent.update(agent, fn _ -> new end) end}
  end

  @doc "SRV tuples, as `:inet_res` gives them, for `labels` of the service."
  def srv(labels), do: for(l <- labels, do: {0, 1, 4000, ~c"#{l}.#{service()}"})

  @doc """
  Starts the strategy on `config`, with more state fields (`meta`) in
  `fields`; killed when the test ends.
  """
  def start(config, recorder, fields \\ []) do
    state =
      struct(State, [topology: :dyn_srv, config: config] ++ fields ++ Recorder.mfas(recorder))

    {:ok, pid} = Cluster.Strategy.DynamicSrv.start_link([state])
    ExUnit.Callbacks.on_exit(fn -> if Process.alive?(pid), do: Process.exit(pid, :kill) end)
    pid
  end
end
