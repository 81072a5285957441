defmodule Bench.Stats do
  @moduledoc false

  @doc "The nearest-rank percentile `p` (0..100) of a non-empty list."
  def percentile(values, p) do
    sorted = Enum.sort(values)
    rank = max(ceil(p / 100 * length(sorted)), 1)
    Enum.at(sorted, rank - 1)
  end

  def median([]), do: nil
  def median(values), do: percentile(values, 50)

  def ratio(_a, b) when b in [0, nil], do: nil
  def ratio(nil, _b), do: nil
  def ratio(a, b), do: a / b

  def fmt_ratio(nil), do: "-"
  def fmt_ratio(r), do: :erlang.float_to_binary(r * 1.0, decimals: 2) <> "x"

  def fmt_int(nil), do: "-"
  def fmt_int(v), do: v |> round() |> Integer.to_string()

  def fmt_float(nil), do: "-"
  def fmt_float(value), do: :erlang.float_to_binary(value / 1, decimals: 2)

  def fmt_ms(nil), do: "-"
  def fmt_ms(us), do: :erlang.float_to_binary(us / 1000, decimals: 2)

  def yes_no(true), do: "yes"
  def yes_no(false), do: "NO"
  def yes_no(nil), do: "-"
end
