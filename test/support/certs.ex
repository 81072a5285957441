defmodule DynamicSrv.Test.Certs do
  @moduledoc """
  Certificates made with openssl for one test run: a CA, and certificates
  it signs for given host names (EC P-256, valid two days).
  """

  @doc "A CA certificate `<name>.pem` and its key `<name>.key` in `dir`."
  def make_ca(dir, name, common_name) do
    openssl!(dir, [
      "req",
      "-x509",
      "-nodes",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-days",
      "2",
      "-subj",
      "/CN=#{common_name}",
      "-keyout",
      "#{name}.key",
      "-out",
      "#{name}.pem",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign"
    ])
  end

  @doc """
  A certificate `<name>.pem` (key `<name>.key`) for `dns_names`, signed by
  the CA `ca` of `dir`, for servers and clients; its common name is
  `common_name`, else the first DNS name.
  """
  def make_cert(dir, name, ca, dns_names, common_name \\ nil) do
    File.write!(Path.join(dir, name <> ".ext"), """
    basicConstraints = critical,CA:FALSE
    keyUsage = critical,digitalSignature
    extendedKeyUsage = serverAuth,clientAuth
    subjectAltName = #{Enum.map_join(dns_names, ",", &"DNS:#{&1}")}
    """)

    openssl!(dir, [
      "req",
      "-new",
      "-nodes",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-subj",
      "/CN=#{common_name || hd(dns_names)}",
      "-keyout",
      "#{name}.key",
      "-out",
      "#{name}.csr"
    ])

    openssl!(dir, [
      "x509",
      "-req",
      "-in",
      "#{name}.csr",
      "-CA",
      "#{ca}.pem",
      "-CAkey",
      "#{ca}.key",
      "-set_serial",
      "#{System.unique_integer([:positive])}",
      "-days",
      "2",
      "-extfile",
      "#{name}.ext",
      "-out",
      "#{name}.pem"
    ])
  end

  defp openssl!(dir, args) do
    case System.cmd("openssl", args, cd: dir, stderr_to_stdout: true) do
      {_, 0} ->
        :ok

      {output, status} ->
        raise("openssl #{Enum.join(args, " ")} exited with #{status}: #{output}")
    end
  end
end
