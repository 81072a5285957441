defmodule DynamicSrv.Test.Agent do
  @moduledoc """
  Runs inside a node started by `DynamicSrv.Test.Node`: reads one
  Base64-encoded Elixir expression per line from standard input, evaluates
  it and prints the result as a Base64 external term after a marker. Halts
  when standard input closes.
  """

  def loop do
    case IO.read(:stdio, :line) do
      :eof ->
        System.halt(0)

      {:error, _} ->
        System.halt(0)

      line ->
        result =
          try do
            {value, _} = line |> String.trim() |> Base.decode64!() |> Code.eval_string()
            value
          catch
            kind, reason -> {:agent_error, kind, reason}
          end

        IO.write(["DYNAMIC_SRV_AGENT ", Base.encode64(:erlang.term_to_binary(result)), "\n"])
        loop()
    end
  end
end
