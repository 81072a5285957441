defmodule DynamicSrv.NifCompilerTest do
  @moduledoc """
  The compiler step of mix.exs (`Mix.Tasks.Compile.DynamicSrvNif`): the
  library's name per OS, where cargo builds, and when it runs. Cargo is
  replaced by a script that writes a library and counts its runs, so these
  tests take no build time; test/package_test.exs builds for real.
  """
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  alias Mix.Tasks.Compile.DynamicSrvNif

  describe "library_names/1" do
    test "macOS: cargo builds a .dylib, installed as the .so the BEAM loads" do
      assert DynamicSrvNif.library_names({:unix, :darwin}) ==
               {"libdynamic_srv_nif.dylib", "libdynamic_srv_nif.so"}
    end

    test "Linux and other Unix systems: a .so, installed as it is" do
      for os <- [:linux, :freebsd] do
        assert DynamicSrvNif.library_names({:unix, os}) ==
                 {"libdynamic_srv_nif.so", "libdynamic_srv_nif.so"}
      end
    end

    test "Windows is refused with a message" do
      assert_raise Mix.Error, ~r/Unix only/, fn -> DynamicSrvNif.library_names({:win32, :nt}) end
    end
  end

  describe "target_dir/1" do
    setup do
      saved = System.get_env("CARGO_TARGET_DIR")
      on_exit(fn -> restore_env("CARGO_TARGET_DIR", saved) end)
    end

    test "under the application's build directory by default" do
      System.delete_env("CARGO_TARGET_DIR")

      assert DynamicSrvNif.target_dir("/b/_build/dev/lib/app") ==
               "/b/_build/dev/lib/app/native/target"

      assert DynamicSrvNif.target_dir() == Path.join(Mix.Project.app_path(), "native/target")
    end

    test "CARGO_TARGET_DIR when it is set" do
      System.put_env("CARGO_TARGET_DIR", "/shared/target")
      assert DynamicSrvNif.target_dir("/b/_build/dev/lib/app") == "/shared/target"
    end
  end

  describe "compile/3 with a stand-in for cargo" do
    setup do
      tmp =
        Path.join(System.tmp_dir!(), "nif_compiler_test_#{System.unique_integer([:positive])}")

      root = Path.join(tmp, "pkg")
      app_path = Path.join(tmp, "_build/dev/lib/libcluster_dynamic_srv")

      files = %{
        "Cargo.toml" => "[workspace]\n",
        "Cargo.lock" => "# lock\n",
        "native/dynamic_srv_nif/Cargo.toml" => "[package]\n",
        "native/dynamic_srv_nif/src/lib.rs" => "fn a() {}\n",
        "native/dynamic_srv_core/src/lib.rs" => "fn b() {}\n"
      }

      for {path, text} <- files do
        File.mkdir_p!(Path.dirname(Path.join(root, path)))
        File.write!(Path.join(root, path), text)
      end

      # Writes the library into --target-dir and counts its runs there.
      cargo = Path.join(tmp, "fake-cargo")
      {built, _} = DynamicSrvNif.library_names(:os.type())

      File.write!(cargo, """
      #!/bin/sh
      while [ $# -gt 0 ]; do [ "$1" = --target-dir ] && dir=$2; shift; done
      mkdir -p "$dir/release" && echo run >>"$dir/runs" && date +%s%N >"$dir/release/#{built}"
      """)

      File.chmod!(cargo, 0o755)
      saved = for var <- ["CARGO", "CARGO_TARGET_DIR"], do: {var, System.get_env(var)}
      System.put_env("CARGO", cargo)
      System.delete_env("CARGO_TARGET_DIR")

      on_exit(fn ->
        Enum.each(saved, fn {var, value} -> restore_env(var, value) end)
        File.rm_rf!(tmp)
      end)

      %{root: root, app_path: app_path}
    end

    test "cargo runs when a source's content changes, even with the same size and mtime", ctx do
      assert compile(ctx) == {:ok, []}
      assert runs(ctx) == 1
      assert File.exists?(Path.join(ctx.app_path, "priv/native/libdynamic_srv_nif.so"))

      assert compile(ctx) == {:noop, []}
      assert runs(ctx) == 1

      # An edit within the same second as the build: same size, and the
      # modification time set back to what it was.
      source = Path.join(ctx.root, "native/dynamic_srv_nif/src/lib.rs")
      %{mtime: mtime, size: size} = File.stat!(source, time: :posix)
      File.write!(source, "fn c() {}\n")
      File.touch!(source, mtime)
      assert %{mtime: ^mtime, size: ^size} = File.stat!(source, time: :posix)

      assert compile(ctx) == {:ok, []}
      assert runs(ctx) == 2
      assert compile(ctx) == {:noop, []}
    end

    test "a new, removed or renamed Rust file counts; fuzz/ and target/ do not", ctx do
      assert compile(ctx) == {:ok, []}

      for ignored <- ["native/dynamic_srv_core/fuzz/src/a.rs", "native/target/release/x.rs"] do
        File.mkdir_p!(Path.dirname(Path.join(ctx.root, ignored)))
        File.write!(Path.join(ctx.root, ignored), "fn z() {}\n")
        assert compile(ctx) == {:noop, []}
      end

      File.write!(Path.join(ctx.root, "native/dynamic_srv_core/src/extra.rs"), "")
      assert compile(ctx) == {:ok, []}

      File.rename!(
        Path.join(ctx.root, "native/dynamic_srv_core/src/extra.rs"),
        Path.join(ctx.root, "native/dynamic_srv_core/src/other.rs")
      )

      assert compile(ctx) == {:ok, []}
      File.rm!(Path.join(ctx.root, "native/dynamic_srv_core/src/other.rs"))
      assert compile(ctx) == {:ok, []}
      File.write!(Path.join(ctx.root, "Cargo.lock"), "# lock, updated\n")
      assert compile(ctx) == {:ok, []}
      assert runs(ctx) == 5
    end

    test "a missing library is built again, --force runs cargo; it builds in the build directory only",
         ctx do
      assert compile(ctx) == {:ok, []}
      File.rm!(Path.join(ctx.app_path, "priv/native/libdynamic_srv_nif.so"))
      assert compile(ctx) == {:ok, []}
      assert compile(ctx, true) == {:ok, []}
      assert runs(ctx) == 3
      assert File.ls!(ctx.root) |> Enum.sort() == ["Cargo.lock", "Cargo.toml", "native"]
    end
  end

  defp compile(%{root: root, app_path: app_path}, force? \\ false) do
    parent = self()

    capture_io(fn ->
      manifest_dir = Path.join(app_path, ".mix")
      send(parent, {:result, DynamicSrvNif.compile(root, app_path, manifest_dir, force: force?)})
    end)

    assert_received {:result, result}
    result
  end

  defp runs(%{app_path: app_path}) do
    case File.read(Path.join(app_path, "native/target/runs")) do
      {:ok, text} -> text |> String.split("\n", trim: true) |> length()
      {:error, :enoent} -> 0
    end
  end

  defp restore_env(var, nil), do: System.delete_env(var)
  defp restore_env(var, value), do: System.put_env(var, value)
end
