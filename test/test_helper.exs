# Tests talk to real processes: dnsmasq and BEAM nodes in their own OS
# processes, network namespaces, openssl, cargo. Each test module starts and
# stops what it uses, and is tagged with what it needs from the machine:
#
# | tag | needs |
# | --- | --- |
# | :dnsmasq | dnsmasq (Debian: dnsmasq-base) |
# | :netns | root and iproute2 (network namespaces) |
# | :openssl | the openssl command (certificates made per run) |
# | :package | cargo (builds the package from scratch as a user would) |
# | :release | nothing more; a mix release, a few minutes |
#
# A plain `mix test` runs what this machine can and names what it skipped
# and why; `make test` sets DYNAMIC_SRV_TEST_ALL=1, and then a missing
# requirement is an error instead.
root? = match?({"0\n", 0}, System.cmd("id", ["-u"]))
cargo? = System.find_executable("cargo") || File.regular?(Path.expand("~/.cargo/bin/cargo"))

requirements = [
  dnsmasq:
    {System.find_executable("dnsmasq") != nil, "dnsmasq is not installed (Debian: dnsmasq-base)"},
  netns:
    {root? and System.find_executable("ip") != nil,
     "network namespaces need root and iproute2's ip"},
  openssl: {System.find_executable("openssl") != nil, "the openssl command is not installed"},
  package: {cargo? != false and cargo? != nil, "cargo is not installed (rustup)"}
]

missing = for {tag, {false, why}} <- requirements, do: {tag, why}

case {missing, System.get_env("DYNAMIC_SRV_TEST_ALL")} do
  {[], _} ->
    :ok

  {_, "1"} ->
    for {tag, why} <- missing, do: IO.puts(:stderr, "test requirement :#{tag} not met: #{why}")

    raise "DYNAMIC_SRV_TEST_ALL=1 (make test) needs every requirement; install what is named above"

  _ ->
    for {tag, why} <- missing,
        do: IO.puts("Skipping tests tagged :#{tag}: #{why} (make test installs it)")
end

# The HTTPS server of precompiled_test.exs uses :ssl, which Mix (Elixir
# 1.15 and newer) leaves out of the code path of a project not listing it.
:ok = DynamicSrv.Build.Download.start_otp_app(:ssl)

# `make test-stress` sets DYNAMIC_SRV_STRESS=1: tests tagged :stress (the
# larger shared start) run only then.
stress = if System.get_env("DYNAMIC_SRV_STRESS") == "1", do: [], else: [:stress]

ExUnit.start(capture_log: true, exclude: Keyword.keys(missing) ++ stress)
