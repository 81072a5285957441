defmodule DynamicSrv.Test.LogTap do
  @moduledoc """
  Runs on a node of a cluster test and keeps the text of every log event
  (from `level` up) that contains one of the given words, so the controller
  can ask what the node logged without reading its console.
  """

  @table __MODULE__

  @doc "Starts keeping events of `level` and above that contain one of `words`."
  @spec start([String.t()], Logger.level()) :: :ok
  def start(words, level \\ :info) do
    owner = spawn(fn -> Process.sleep(:infinity) end)
    :ets.new(@table, [:named_table, :public, :duplicate_bag, {:heir, owner, nil}])
    :ets.give_away(@table, owner, nil)
    :ok = :logger.set_primary_config(:level, level)
    Logger.configure(level: level)
    :ok = :logger.add_primary_filter(@table, {&__MODULE__.filter/2, words})
  end

  @doc "The kept lines, oldest first."
  @spec lines() :: [String.t()]
  def lines, do: @table |> :ets.tab2list() |> Enum.sort() |> Enum.map(&elem(&1, 1))

  @doc false
  def filter(%{msg: msg} = event, words) do
    text = DynamicSrv.Test.ClusterProbe.text(msg)

    if Enum.any?(words, &String.contains?(text, &1)),
      do: :ets.insert(@table, {System.monotonic_time(), text})

    event
  catch
    _, _ -> event
  end
end
