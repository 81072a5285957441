defmodule DynamicSrv.Runner.Child do
  @moduledoc false
  # One child the runner keeps running (its provider process or its engine):
  # how it starts, and what happens when a start fails or the child exits.
  # A data structure the runner process holds, not a process: the runner
  # owns the link, and its timer messages come back as
  # `{DynamicSrv.Runner.Child, :start, id}`.
  #
  # A start that fails is logged once with what to fix (again only when the
  # reason changes) and retried after `next_delay/1`: 1 s, doubling up to
  # 30 s. A child that exits is restarted after the current delay, which
  # goes back to 1 s once a child has run for 30 s. Unlike an OTP supervisor,
  # it never gives up, so neither the runner nor the application stops.
  require Logger

  @first_delay 1_000
  @max_delay 30_000
  @shutdown 5_000

  defstruct [
    :id,
    :start,
    pid: nil,
    started_at: nil,
    delay: @first_delay,
    failures: 0,
    logged: nil
  ]

  @typedoc """
  How the child starts: a provider module and its configuration (see
  `start_mfa/2`), or a function to apply.
  """
  @type start :: {:provider, module(), keyword()} | {:mfa, module(), atom(), list()}
  @type t :: %__MODULE__{id: atom(), start: start()}

  @doc "A kept child named `id` (the runner's key for it), not started yet."
  @spec new(atom(), start()) :: t()
  def new(id, start), do: %__MODULE__{id: id, start: start}

  @doc "How long a child is given to stop before it is killed, in ms."
  @spec shutdown() :: pos_integer()
  def shutdown, do: @shutdown

  @doc "The delay before the start that follows a failed one waited `delay` ms."
  @spec next_delay(pos_integer()) :: pos_integer()
  def next_delay(delay), do: min(delay * 2, @max_delay)

  @doc """
  How the runner starts `via`: its `child_spec/1`, else `start_link/1` with
  `config`, else `start_link/0`. A start naming `start_link/1` of a module
  that only has `start_link/0` (as `use GenServer` generates for Peerage's
  providers) becomes `start_link/0`. `{:error, :no_start}` when the module
  has none of them.
  """
  @spec start_mfa(module(), keyword()) :: {:ok, mfa()} | {:error, term()}
  def start_mfa(via, config) do
    Code.ensure_loaded(via)

    cond do
      function_exported?(via, :child_spec, 1) ->
        %{start: {m, f, a}} = Supervisor.child_spec({via, config}, [])
        {:ok, arity_fallback({m, f, a})}

      function_exported?(via, :start_link, 1) ->
        {:ok, {via, :start_link, [config]}}

      function_exported?(via, :start_link, 0) ->
        {:ok, {via, :start_link, []}}

      true ->
        {:error, :no_start}
    end
  rescue
    e -> {:error, {:child_spec, Exception.format_banner(:error, e, __STACKTRACE__)}}
  end

  defp arity_fallback({m, :start_link, [_]} = mfa) do
    if not function_exported?(m, :start_link, 1) and function_exported?(m, :start_link, 0),
      do: {m, :start_link, []},
      else: mfa
  end

  defp arity_fallback(mfa), do: mfa

  @doc """
  Starts the child, linked to the caller (also a child that started
  without a link). On failure, logs and schedules the next attempt.
  """
  @spec start(t()) :: t()
  def start(kept) do
    case run_start(kept.start) do
      {:ok, pid} ->
        Process.link(pid)

        if kept.failures > 0,
          do: Logger.info("#{label(kept)} started after #{kept.failures} failed attempt(s)")

        %{
          kept
          | pid: pid,
            started_at: System.monotonic_time(:millisecond),
            failures: 0,
            logged: nil
        }

      :ignore ->
        kept

      {:error, reason} ->
        message = failure_message(kept, reason)

        # The same failure again is not logged again; the success says how
        # many attempts failed.
        if message != kept.logged,
          do:
            Logger.error(
              "#{message}; retrying in #{seconds(kept.delay)}, the delay doubling up to #{seconds(@max_delay)}"
            )

        schedule(kept, kept.delay)
        %{kept | delay: next_delay(kept.delay), failures: kept.failures + 1, logged: message}
    end
  end

  @doc "A scheduled attempt: starts the child unless it is running."
  @spec start_again(t()) :: t()
  def start_again(%__MODULE__{pid: nil} = kept), do: start(kept)
  def start_again(kept), do: kept

  @doc "The child exited with `reason`: logged, and restarted after the current delay."
  @spec exited(t(), term()) :: t()
  def exited(kept, reason) do
    ran = System.monotonic_time(:millisecond) - kept.started_at
    delay = if ran >= @max_delay, do: @first_delay, else: kept.delay

    Logger.warning(
      "#{label(kept)} exited (#{inspect(reason, limit: 10)}); restarting it in #{seconds(delay)}"
    )

    schedule(kept, delay)
    %{kept | pid: nil, delay: next_delay(delay), logged: nil}
  end

  @doc """
  Stops the child as a supervisor would (`:shutdown`, killed after
  `shutdown/0` ms). The caller traps exits; the child's exit is consumed.
  """
  @spec stop(t()) :: t()
  def stop(%__MODULE__{pid: pid} = kept) when is_pid(pid) do
    Process.exit(pid, :shutdown)

    receive do
      {:EXIT, ^pid, _} -> :ok
    after
      @shutdown ->
        Process.exit(pid, :kill)
        receive do: ({:EXIT, ^pid, _} -> :ok)
    end

    %{kept | pid: nil}
  end

  def stop(kept), do: kept

  defp schedule(kept, delay), do: Process.send_after(self(), {__MODULE__, :start, kept.id}, delay)

  defp run_start({:provider, via, config}) do
    with {:ok, {m, f, a}} <- start_mfa(via, config), do: run_start({:mfa, m, f, a})
  end

  defp run_start({:mfa, m, f, a}) do
    case apply(m, f, a) do
      {:ok, pid} when is_pid(pid) -> {:ok, pid}
      {:ok, pid, _info} when is_pid(pid) -> {:ok, pid}
      :ignore -> :ignore
      {:error, reason} -> {:error, reason}
      other -> {:error, {:bad_return, other}}
    end
  catch
    kind, reason -> {:error, {:raised, Exception.format_banner(kind, reason, __STACKTRACE__)}}
  end

  defp label(%{start: {:provider, via, _}}), do: inspect(via)
  defp label(%{start: {:mfa, m, _, _}}), do: inspect(m)

  defp failure_message(kept, :no_start),
    do:
      "#{label(kept)} cannot start: with serves: true a provider needs child_spec/1, start_link/1 or start_link/0; define one, or set serves: false if it is not a process"

  defp failure_message(kept, {:child_spec, banner}),
    do: "#{label(kept)}.child_spec/1 raised #{banner}; fix the provider"

  defp failure_message(kept, {:raised, banner}),
    do: "#{label(kept)} raised while starting: #{banner}; fix the provider or its configuration"

  defp failure_message(kept, {:bad_return, other}),
    do:
      "#{label(kept)} did not start: its start returned #{inspect(other, limit: 10)}, expected {:ok, pid}, :ignore or {:error, reason}; fix the provider"

  # A provider's own message (DynamicSrv.Via.Udp gives its fix in it).
  defp failure_message(kept, {:shutdown, reason}) when is_binary(reason),
    do: failure_message(kept, reason)

  defp failure_message(kept, reason) when is_binary(reason),
    do: "#{label(kept)} did not start: #{reason}"

  defp failure_message(kept, {reason, stack}) when is_list(stack) and is_exception(reason),
    do:
      "#{label(kept)} did not start: its init raised #{Exception.format_banner(:error, reason, stack)}; fix the provider or its configuration"

  defp failure_message(kept, reason),
    do:
      "#{label(kept)} did not start: #{inspect(reason, limit: 10)}; fix the provider or its configuration"

  defp seconds(ms) when rem(ms, 1_000) == 0, do: "#{div(ms, 1_000)} s"
  defp seconds(ms), do: "#{ms} ms"
end
