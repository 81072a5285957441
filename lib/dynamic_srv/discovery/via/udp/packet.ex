defmodule DynamicSrv.Via.Udp.Packet do
  @moduledoc """
  The announcement packet of `DynamicSrv.Via.Udp`: a fixed binary layout,
  never an Erlang external term, so nothing from the network is ever passed
  to `:erlang.binary_to_term/1`.

      "DSRV" | version 1 | flags | timestamp (ms, 64 bits) | dist port (16 bits)
             | name length (8 bits) | name | HMAC-SHA256 (32 bytes, when flag 1 is set)

  The MAC covers every byte before it. Decoding checks the layout and the
  node name (by the rule of `DynamicSrv.Naming`), but never creates an
  atom.
  """

  @magic "DSRV"
  @version 1
  @mac_flag 1
  @mac_size 32

  @type t :: %{
          name: String.t(),
          timestamp: non_neg_integer(),
          dist_port: :inet.port_number(),
          authenticated?: boolean()
        }

  @doc "Encodes an announcement, with a MAC when `secret` is not nil."
  @spec encode(String.t(), non_neg_integer(), non_neg_integer(), binary() | nil) :: binary()
  def encode(name, timestamp, dist_port, secret) when byte_size(name) <= 255 do
    flags = if secret, do: @mac_flag, else: 0

    body =
      <<@magic, @version, flags, timestamp::64, dist_port::16, byte_size(name), name::binary>>

    if secret, do: body <> mac(secret, body), else: body
  end

  @doc """
  Decodes and checks a packet. With a `secret`, a packet without a valid
  MAC is refused; without one, the MAC (if any) is not checked.
  """
  @spec decode(binary(), binary() | nil) :: {:ok, t()} | {:error, atom()}
  def decode(packet, secret) do
    with {:ok, body, fields, mac} <- split(packet),
         :ok <- verify(body, mac, secret),
         :ok <- check_name(fields.name) do
      {:ok, Map.put(fields, :authenticated?, secret != nil)}
    end
  end

  # Sizes are taken with binary_part/3, not size variables in the pattern:
  # Elixir 1.20 wants such a variable pinned, which Elixir 1.14 refuses.
  defp split(
         <<@magic, @version, flags, timestamp::64, dist_port::16, len, tail::binary>> = packet
       )
       when byte_size(tail) >= len do
    name = binary_part(tail, 0, len)
    rest = binary_part(tail, len, byte_size(tail) - len)
    body = binary_part(packet, 0, byte_size(packet) - byte_size(rest))
    fields = %{name: name, timestamp: timestamp, dist_port: dist_port}

    case {Bitwise.band(flags, @mac_flag), rest} do
      {0, <<>>} -> {:ok, body, fields, nil}
      {1, <<mac::binary-size(@mac_size)>>} -> {:ok, body, fields, mac}
      _ -> {:error, :malformed}
    end
  end

  defp split(_packet), do: {:error, :malformed}

  defp verify(_body, _mac, nil), do: :ok
  defp verify(_body, nil, _secret), do: {:error, :unauthenticated}

  defp verify(body, mac, secret) do
    if :crypto.hash_equals(mac(secret, body), mac), do: :ok, else: {:error, :bad_mac}
  end

  defp check_name(name) do
    if DynamicSrv.Naming.node_name?(name), do: :ok, else: {:error, :bad_name}
  end

  defp mac(secret, body), do: :crypto.mac(:hmac, :sha256, secret, body)
end
