# The NIF's build steps (Mix tasks that must exist before the project
# compiles, also when it is a dependency).
for file <- ~w(nif_download.exs nif_precompiled.exs nif_compiler.exs nif_precompile_task.exs),
    do: Code.require_file(file, Path.join(__DIR__, "build"))

defmodule LibclusterDynamicSrv.MixProject do
  use Mix.Project

  @version "2.0.0"
  @source_url "https://github.com/libcluster-dynamic-srv/libcluster_dynamic_srv"

  def project do
    [
      app: :libcluster_dynamic_srv,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:dynamic_srv_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      # test/fixtures holds projects the tests build (Elixir 1.19+ warns
      # about files under test/ that are neither tests nor ignored).
      test_ignore_filters: [&String.starts_with?(&1, "test/fixtures/")],
      start_permanent: Mix.env() == :prod,
      deps: [],
      package: package(),
      docs: docs(),
      source_url: @source_url,
      # Where `mix compile` fetches the precompiled NIF of this version
      # (DYNAMIC_SRV_NIF_URL overrides it).
      nif_download_url: "#{@source_url}/releases/download/v#{@version}",
      description:
        "DNS SRV clustering for Erlang/Elixir nodes on dynamically assigned distribution ports, " <>
          "with no epmd daemon; DNS work done by a Rust NIF"
    ]
  end

  def application do
    [
      extra_applications: [:logger, :crypto],
      mod: {DynamicSrv.Application, []}
    ]
  end

  # test/support (real dnsmasq and node processes) also serves `make demo`
  # and `make bench`; it is never part of the package.
  defp elixirc_paths(:prod), do: ["lib"]
  defp elixirc_paths(_), do: ["lib", "test/support"]

  # ex_doc's settings (ex_doc is not a dependency: `mix docs` needs it added
  # where it is reachable). The guides are its extras.
  defp docs do
    [
      main: "readme",
      source_ref: "v#{@version}",
      extras: ["README.md", "CHANGELOG.md" | Path.wildcard("guides/*.md")]
    ]
  end

  defp package do
    [
      files: ~w(
        lib
        native/dynamic_srv_core/Cargo.toml native/dynamic_srv_core/src
        native/dynamic_srv_nif/Cargo.toml native/dynamic_srv_nif/src
        Cargo.toml Cargo.lock
        build checksum-Elixir.DynamicSrv.Native.exs
        mix.exs .formatter.exs README.md CHANGELOG.md LICENSE guides
      ),
      licenses: ["Apache-2.0"]
    ]
  end
end
