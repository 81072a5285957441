defmodule Bench.Report do
  @moduledoc false
  @results Path.expand("../results/latest.txt", __DIR__)

  @doc "Renders rows (lists of strings) under `headers` as an aligned table."
  def table(headers, rows) do
    all = [headers | rows]

    widths =
      Enum.reduce(all, List.duplicate(0, length(headers)), fn row, widths ->
        Enum.zip_with(row, widths, fn cell, w -> max(String.length(cell), w) end)
      end)

    line = fn row ->
      cells =
        row
        |> Enum.zip(widths)
        |> Enum.with_index()
        |> Enum.map(fn {{cell, w}, i} ->
          if i == 0, do: String.pad_trailing(cell, w), else: String.pad_leading(cell, w)
        end)

      "| " <> Enum.join(cells, " | ") <> " |"
    end

    rule = "|" <> Enum.map_join(widths, "|", &String.duplicate("-", &1 + 2)) <> "|"
    Enum.join([line.(headers), rule | Enum.map(rows, line)], "\n") <> "\n"
  end

  @doc """
  One measured run on a cluster: boots it with `boot`, returns what
  `measure` returns for it (printed under `label`), and stops the cluster;
  a run that fails is `%{error: banner}`, printed, and the bench goes on.
  """
  def cluster_run(label, boot, measure) do
    cluster = boot.()

    try do
      result = measure.(cluster)
      IO.puts("  #{label}: #{inspect(result)}")
      result
    after
      DynamicSrv.Test.SharedStart.stop(cluster)
    end
  catch
    kind, reason ->
      IO.puts("  #{label} FAILED: #{Exception.format_banner(kind, reason)}")
      %{error: Exception.format_banner(kind, reason)}
  end

  @doc "Prints `text` now and keeps it for the results file."
  def emit(text) do
    IO.write(text)
    Process.put(:bench_report, [text | Process.get(:bench_report, [])])
    text
  end

  def header do
    {dnsmasq, 0} = System.cmd(dnsmasq(), ["--version"], stderr_to_stdout: true)
    {named, _} = System.cmd(named(), ["-v"], stderr_to_stdout: true)

    emit("""
    libcluster_dynamic_srv benchmark, #{DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()}
    OTP #{System.otp_release()} (erts #{:erlang.system_info(:version)}), Elixir #{System.version()}, \
    #{:erlang.system_info(:logical_processors_available)} logical CPUs, \
    #{System.schedulers_online()} schedulers online
    #{dnsmasq |> String.split("\n") |> hd()}; #{String.trim(named)}
    Source: #{source()}
    Medians are nearest-rank; ratios are NIF / :inet_res measured in this same run.

    """)
  end

  def finish(elapsed_s) do
    emit("\nTotal bench time: #{elapsed_s} s\n")
    File.mkdir_p!(Path.dirname(@results))
    File.write!(@results, Process.get(:bench_report, []) |> Enum.reverse() |> Enum.join())
    IO.puts("Written to #{Path.relative_to_cwd(@results)}")
  end

  @doc "Runs one part; a crash is reported and the bench goes on."
  def part(name, fun) do
    fun.()
  catch
    kind, reason ->
      emit("\nPart #{name} FAILED: #{Exception.format(kind, reason, __STACKTRACE__)}\n")
  end

  # The commit, and which of lib/ and native/ differ from it.
  defp source do
    with {commit, 0} <-
           System.cmd("git", ["rev-parse", "--short", "HEAD"], stderr_to_stdout: true),
         {status, 0} <-
           System.cmd("git", ["status", "--porcelain", "--", "lib", "native"],
             stderr_to_stdout: true
           ) do
      dirty =
        status
        |> String.split("\n", trim: true)
        |> Enum.map(&(&1 |> String.slice(3..-1//1) |> String.split("/") |> Enum.take(2)))
        |> Enum.map(&Enum.join(&1, "/"))
        |> Enum.uniq()

      case dirty do
        [] -> "commit #{String.trim(commit)}"
        _ -> "commit #{String.trim(commit)} + uncommitted changes in #{Enum.join(dirty, ", ")}"
      end
    else
      _ -> "unknown (no git)"
    end
  rescue
    _ -> "unknown (no git)"
  end

  defp dnsmasq, do: System.find_executable("dnsmasq") || "/usr/sbin/dnsmasq"
  defp named, do: System.find_executable("named") || "/usr/sbin/named"
end
