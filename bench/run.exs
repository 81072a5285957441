# `make bench`: the NIF resolver against :inet_res, and clusters of real
# nodes whose strategies all start at one instant, measured in one run
# against local DNS servers. `make bench-scale` runs part B at 50 and 100
# nodes.
#
#   MIX_ENV=dev mix run --no-start bench/run.exs
#
# Parts: A, the NIF resolver against :inet_res; B, clusters started at one
# instant; C, SRV answers of 1,000 and 5,000 records; D, clusters whose DNS
# answers list only some nodes; E, a DNS server that fails, listed first;
# F, the mesh's own cost, joined one step at a time (the floor under B).
# Environment: BENCH_PARTS ("a,b,c,d,e,f" by default; e.g. "b" runs one part),
# BENCH_RUNS (cluster starts per size, default 5), BENCH_SIZES (cluster
# sizes of B and F, default "5,10,20"), BENCH_FLOOR_RUNS (part F's joins
# per size and order, default 3), BENCH_SUBSET_SIZES (part D, default "8,20"),
# BENCH_LIBCLUSTER (1: part B's nodes load the libcluster stand-in of
# test/fixtures/libcluster, so the strategy connects through
# Cluster.Strategy.connect_nodes/4 and logs through Cluster.Logger).
#
# The tables are printed and written to bench/results/latest.txt.

# One module per file: statistics, the report, the resolver part (A).
for file <- ~w(stats.exs report.exs resolver_bench.exs),
    do: Code.require_file(file, Path.join(__DIR__, "support"))

Code.require_file("cluster_start.exs", __DIR__)
Code.require_file("large_answers.exs", __DIR__)
Code.require_file("subset_answers.exs", __DIR__)
Code.require_file("failover.exs", __DIR__)
Code.require_file("mesh_floor.exs", __DIR__)

alias Bench.{
  ClusterStart,
  Failover,
  LargeAnswers,
  MeshFloor,
  Report,
  ResolverBench,
  SubsetAnswers
}

parts =
  (System.get_env("BENCH_PARTS") || "a,b,c,d,e,f")
  |> String.split(",", trim: true)
  |> Enum.map(&String.trim/1)

runs = String.to_integer(System.get_env("BENCH_RUNS") || "5")

int_list = fn var, default ->
  (System.get_env(var) || default)
  |> String.split(",", trim: true)
  |> Enum.map(&String.to_integer(String.trim(&1)))
end

sizes = int_list.("BENCH_SIZES", "5,10,20")
libcluster? = System.get_env("BENCH_LIBCLUSTER") == "1"
subset_sizes = int_list.("BENCH_SUBSET_SIZES", "8,20")
floor_runs = String.to_integer(System.get_env("BENCH_FLOOR_RUNS") || "3")

started = System.monotonic_time(:millisecond)
Report.header()
if "a" in parts, do: Report.part("A", &ResolverBench.run/0)
if "b" in parts, do: Report.part("B", fn -> ClusterStart.run(sizes, runs, libcluster?) end)
if "c" in parts, do: Report.part("C", &LargeAnswers.run/0)
if "d" in parts, do: Report.part("D", fn -> SubsetAnswers.run(subset_sizes) end)
if "e" in parts, do: Report.part("E", &Failover.run/0)
if "f" in parts, do: Report.part("F", fn -> MeshFloor.run(sizes, floor_runs) end)
Report.finish(div(System.monotonic_time(:millisecond) - started, 1000))
