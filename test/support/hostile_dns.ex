defmodule DynamicSrv.Test.HostileDns do
  @moduledoc """
  A UDP DNS server on loopback that answers every query with what the test
  asks for: malformed packets, wrong IDs, compression loops, oversized
  counts, or a well-formed answer built by hand. It runs in its own process;
  `stop/1` closes it.
  """

  @doc "Starts the server; `mode` is a function from the query to a list of replies."
  def start(mode) do
    parent = self()

    pid =
      spawn(fn ->
        {:ok, socket} = :gen_udp.open(0, [:binary, active: true, ip: {127, 0, 0, 1}])
        {:ok, port} = :inet.port(socket)
        send(parent, {self(), :port, port})
        loop(socket, mode)
      end)

    receive do
      {^pid, :port, port} -> %{pid: pid, port: port}
    end
  end

  def set_mode(%{pid: pid}, mode), do: send(pid, {:mode, mode})

  def stop(%{pid: pid}), do: Process.exit(pid, :kill)

  def nameservers(%{port: port}), do: [{{127, 0, 0, 1}, port}]

  defp loop(socket, mode) do
    receive do
      {:mode, mode} ->
        loop(socket, mode)

      {:udp, ^socket, ip, port, query} ->
        for reply <- mode.(query), do: :gen_udp.send(socket, ip, port, reply)
        loop(socket, mode)
    end
  end

  @doc "The ID and the question section of a query."
  def split_query(<<id::16, _flags::16, 1::16, _an::16, _ns::16, _ar::16, rest::binary>>) do
    {question, _} = take_question(rest, <<>>)
    {id, question}
  end

  defp take_question(<<0, _type::16, _class::16, rest::binary>> = bin, acc),
    do: {acc <> binary_part(bin, 0, 5), rest}

  defp take_question(<<len, label::binary-size(len), rest::binary>>, acc),
    do: take_question(rest, acc <> <<len, label::binary>>)

  @doc "A response header: flags 0x8180 (response, recursion), given counts."
  def header(id, an, opts \\ []) do
    flags = Keyword.get(opts, :flags, 0x8180)
    <<id::16, flags::16, 1::16, an::16, 0::16, 0::16>>
  end

  @doc "A name in wire format."
  def wire_name(name) do
    labels = name |> String.trim_trailing(".") |> String.split(".")
    IO.iodata_to_binary(Enum.map(labels, &<<byte_size(&1), &1::binary>>) ++ [<<0>>])
  end

  @doc "An SRV resource record for the question's name (pointer to offset 12)."
  def srv_rr(target, port) do
    rdata = <<0::16, 1::16, port::16>> <> wire_name(target)
    <<0xC0, 12, 33::16, 1::16, 0::32, byte_size(rdata)::16, rdata::binary>>
  end
end
