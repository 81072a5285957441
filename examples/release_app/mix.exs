defmodule ReleaseApp.MixProject do
  use Mix.Project

  def project do
    [
      app: :release_app,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [{:libcluster_dynamic_srv, path: "../.."}],
      releases: [release_app: [include_executables_for: [:unix]]]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {ReleaseApp.Application, []}]
  end
end
